"""Test support shared by tests/ and benchmarks/ (which never import tests/conftest.py).

- `colours`: the colour apps (`ColourApp`, `BreakableColour`) and `start_app`;
- `net`: `free_port`, `raw_exchange`, `RunningProxy`;
- `waiting`: `wait_for`, `wait_for_async`, `wait_until_ready` (a `bluegreen run`'s /readyz);
- `files`: `atomic_write`, as editors save;
- `upstreams`: raw-stream upstreams (`RawUpstreams`, `RecordingUpstream`) and `proxy_to`;
- `process`: `bluegreen run` as a subprocess (`Proxy`, `running`, `config_text`, `sample`);
- `memory_transport`: in-memory transports for the protocol tests;
- `kube_process`: a ProxyProcess following a ConfigMap, `colour_data`, and the check of its
  Role's limits.

Test modules import from here, never from one another (the one exception: tests/test_fuzz_parsing.py
seeds its corpus with the table of tests/test_strict_parsing.py).

These are plain modules, except the pytest plugins `markers` and `kube_fixtures`, which
tests/conftest.py loads for the whole test tree.
"""
