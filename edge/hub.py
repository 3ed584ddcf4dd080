"""A checkpoint argument: a local directory, or a Hugging Face hub id found in the local cache.

`resolve_checkpoint("google/gemma-3n-E2B-it")` returns the cached snapshot directory through
`huggingface_hub` (so `HF_HOME` / `HF_HUB_CACHE` are honoured) and never downloads: a
multi-gigabyte fetch is the user's decision, so a miss is an error naming the cache that was
searched and the command that fills it. `REPO@REVISION` picks a branch, tag or commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge.errors import UserError

# owner/name as the hub spells repo ids (huggingface_hub.utils.validate_repo_id's rules, no dots
# at the ends), optionally @revision. Anything with a path separator beyond the one slash is a path.
_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w][\w.-]{0,95})(?:@(?P<rev>[\w./-]+))?$")


@dataclass(frozen=True)
class CheckpointSource:
    """Where a checkpoint argument points: the directory, and for a hub id the repo and the commit."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None  # the commit hash of the cached snapshot

    def record(self) -> dict:
        """The manifest's provenance fields for this source."""
        out = {"checkpoint": str(self.path.resolve())}
        if self.repo_id:
            out.update(repo_id=self.repo_id, revision=self.revision)
        return out


def resolve_checkpoint(arg: str | Path) -> CheckpointSource:
    """A local path as given, or a hub id (owner/name[@revision]) resolved from the local cache."""
    path = Path(arg)
    if path.exists() or not isinstance(arg, str):
        return CheckpointSource(path)
    m = _REPO_ID.match(arg)
    if not m:
        raise UserError(f"{arg}: no such directory. Give a checkpoint directory or a Hugging Face hub id "
                        "(owner/name, e.g. google/gemma-3n-E2B-it).")
    repo, rev = m.group("repo"), m.group("rev")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo, revision=rev, local_files_only=True))
    except HFValidationError as e:
        raise UserError(f"{arg}: not a directory, and not a valid hub id ({e}).") from None
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        where = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        get = f"hf download {repo}" + (f" --revision {rev}" if rev else "")
        raise UserError(f"{arg}: not a local directory, and the Hugging Face cache has no snapshot of it "
                        f"(looked in {where}; the cache is set by HF_HOME or HF_HUB_CACHE). This tool does not "
                        f"download: run `{get}` (gated Gemma models need `hf auth login` and the licence "
                        "accepted on the model page), or pass the checkpoint directory.") from None
    return CheckpointSource(snapshot, repo, snapshot.name)
