"""`bluegreen validate`: check a config file, or every bluegreen ConfigMap in a YAML stream.

Pure: bytes in, one verdict per checked document out. A single document is checked as the proxy
would load it (flat keys or one ConfigMap manifest). A stream of several documents, such as
`kubectl kustomize overlay`, is searched for bluegreen configs: flat documents, and ConfigMaps
whose data has `active` or an `upstream.` key (or the one named with `name`); the other
documents (Deployments, Services, unrelated ConfigMaps) are listed as skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from controller.config import Config, ConfigError, config_from_document, parse_config
from controller.file_source import StrictLoader, parse_config_bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result for one document: what it is, and its config or the error."""

    what: str  # "ConfigMap default/bluegreen (document 3)", or the source for a single document
    config: Config | None
    error: ConfigError | None


@dataclass(frozen=True, slots=True)
class Report:
    """Every checked document, and a line for each one skipped."""

    verdicts: tuple[Verdict, ...]
    skipped: tuple[str, ...]

    @property
    def valid(self) -> bool:
        """True when at least one config was checked and every checked one is valid."""
        return bool(self.verdicts) and all(v.error is None for v in self.verdicts)


def _describe(doc: Mapping[object, object], index: int) -> str:
    kind = doc.get("kind") or "a manifest without kind"
    metadata = doc.get("metadata")
    name = namespace = None
    if isinstance(metadata, Mapping):
        name, namespace = metadata.get("name"), metadata.get("namespace")
    where = f"{namespace}/{name}" if namespace else str(name or "(no name)")
    return f"{kind} {where} (document {index})"


def _is_bluegreen(doc: Mapping[object, object], name: str | None) -> bool:
    """Whether a ConfigMap is one to check: the one named, or one with bluegreen's keys."""
    metadata = doc.get("metadata")
    if name is not None:
        return isinstance(metadata, Mapping) and metadata.get("name") == name
    data = doc.get("data")
    return isinstance(data, Mapping) and any(
        isinstance(key, str) and (key == "active" or key.startswith("upstream.")) for key in data
    )


def _check(doc: object, what: str) -> Verdict:
    try:
        config = parse_config(config_from_document(doc))
    except ConfigError as error:
        return Verdict(what, None, error.with_source(what))
    return Verdict(what, config, None)


def validate_stream(raw: bytes, source: str, name: str | None = None) -> Report:
    """Check `raw` (one YAML document or several, as `kubectl kustomize` prints them).

    Raises nothing for bad input: YAML and encoding faults come back as a failed verdict.
    """
    try:
        text = raw.decode("utf-8")
        docs = list(yaml.load_all(text, Loader=StrictLoader))  # SafeLoader: no objects
    except (UnicodeDecodeError, yaml.YAMLError):
        # Let the single-document loader word the fault (line and column, or the bad byte).
        return _single(raw, source)
    present = [(i, doc) for i, doc in enumerate(docs, start=1) if doc is not None]
    if len(present) <= 1 and name is None:
        return _single(raw, source)
    verdicts: list[Verdict] = []
    skipped: list[str] = []
    for index, doc in present:
        if isinstance(doc, Mapping) and "kind" not in doc and "apiVersion" not in doc:
            verdicts.append(_check(doc, f"{source} (document {index})"))
        elif isinstance(doc, Mapping) and doc.get("kind") == "ConfigMap":
            what = _describe(doc, index)
            if _is_bluegreen(doc, name):
                verdicts.append(_check(doc, what))
            else:
                skipped.append(what)
        else:
            skipped.append(
                _describe(doc, index) if isinstance(doc, Mapping) else f"document {index}"
            )
    if not verdicts:
        wanted = f"no ConfigMap named {name!r}" if name else "no bluegreen config"
        problem = (
            f"found {wanted} among {len(present)} documents; expected flat keys or a "
            "ConfigMap whose data: has active: and upstream.<colour>: keys"
        )
        verdicts.append(Verdict(source, None, ConfigError(problem, source=source)))
    return Report(tuple(verdicts), tuple(skipped))


def _single(raw: bytes, source: str) -> Report:
    try:
        config = parse_config_bytes(raw, source)
    except ConfigError as error:
        return Report((Verdict(source, None, error),), ())
    return Report((Verdict(source, config, None),), ())
