"""Export one tower's artifacts through the build's one export function, and describe each as
the tests read it (file, kind, signatures, tolerance, bytes, FULLY_CONNECTED weights per format)."""

from __future__ import annotations

from pathlib import Path


def export_modality(modality: str, cfg, get, out: Path, recipe: str, graph_dir: Path,
                    image_size: tuple[int, int] | None = None) -> dict[str, dict]:
    from converters.components.audio import fc_counts
    from converters.components.spec import Source
    from converters.export import export_modality as export

    entries = {}
    for key, (art, report) in export(modality, Source(cfg, get, Path(graph_dir), image_size=image_size),
                                     recipe, Path(out)).items():
        entries[key] = {
            "name": key, "file": art.file, "kind": art.kind,
            "signatures": {k: s.to_dict() for k, s in art.signatures.items()},
            "tolerance": art.tolerance.to_dict(), "bytes": (Path(out) / art.file).stat().st_size,
            "weights": fc_counts(report) if report is not None else {},
        }
    return entries
