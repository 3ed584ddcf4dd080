"""What Google AI Edge Gallery needs to run a `.litertlm`, read from the bundle itself.

Gallery (google-ai-edge/gallery @ 2cb35a2, app 1.0.18, LiteRT-LM 0.11.0; docs/GALLERY.md cites
the files) takes a custom model two ways:

- **Import** (Models, "+", "From local model file"): the file name must end in `.litertlm`
  and not contain "-web" (GlobalModelManager.kt); the dialog asks for "Support image",
  "Support audio", the accelerators and "Default max tokens" (slider 100..4096, default
  1024), which becomes the engine's `maxNumTokens` (LlmChatModelHelper.kt).
- **A model-list entry** (`AllowedModel`, ModelAllowlist.kt) in
  `/data/local/tmp/model_allowlist_test.json`, which Gallery reads *instead of* its online
  list when present; `localModelFilePathOverride` points it at a file already on the phone.

Both need the same facts, which come from the bundle (so this works on anyone's bundle):
which towers it holds, its sampler defaults and KV-cache length (LlmMetadata), its size,
and the RAM it needs (edge/bench.py's memory model when the artifact directory is there).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from edge.errors import UserError

GIB = 1 << 30  # Gallery's BYTES_IN_GB (MemoryWarning.kt) is 1024^3
GALLERY_RUNTIME = "0.11.0"  # litertlm-android in Gallery 1.0.18 (gradle/libs.versions.toml)
MAX_TOKENS_SLIDER = (100, 4096)  # ModelImportDialog.kt
DEVICE_DIR = "/data/local/tmp/llm"  # readable by apps; where the entry's localModelFilePathOverride points
ALLOWLIST_ON_DEVICE = "/data/local/tmp/model_allowlist_test.json"  # ModelManagerViewModel.kt
IMPORT_DIR = "/sdcard/Download"  # where the system file picker finds a pushed file
# Share of a phone's advertised RAM the model may need (the OS, the GPU carve-out and the apps
# kept alive take the rest), calibrated on Google's own entry: 8 GB for its E2B bundle
# (3,655,827,456 B), whose resident need by install.py's estimate is 2.54 GiB, about a third.
RAM_SHARE = 1 / 3

_VISION = "vision_encoder"
_AUDIO = "audio_encoder_hw"


@dataclass(frozen=True)
class GalleryModel:
    """One bundle as Gallery sees it."""

    bundle: Path
    file_name: str  # the name to give it on the phone
    size: int
    sha256: str
    image: bool
    audio: bool
    max_num_tokens: int  # the bundle's KV-cache length
    top_k: int
    top_p: float
    temperature: float
    ram_need: int  # bytes the model keeps resident while decoding (estimate)
    ram_source: str
    min_runtime: str  # LlmMetadata.min_runtime_version: the oldest LiteRT-LM that answers as intended

    @property
    def gallery_runtime_ok(self) -> bool:
        """Whether Gallery 1.0.18's runtime answers as the bundle's own minimum runtime does."""
        return _version(self.min_runtime) <= _version(GALLERY_RUNTIME)

    @property
    def max_tokens(self) -> int:
        """The "Default max tokens" to set: the bundle's context, within Gallery's slider. A larger
        value is harmless (the engine stops at the bundle's KV-cache length: measured with
        litert_lm's max_num_tokens 200 and 1024 on a 96-token bundle), a smaller one cuts answers."""
        low, high = MAX_TOKENS_SLIDER
        return max(low, min(high, self.max_num_tokens))

    @property
    def min_device_memory_gb(self) -> int:
        return math.ceil(self.ram_need / RAM_SHARE / GIB)

    def task_types(self) -> list[str]:
        return ["llm_chat", "llm_prompt_lab"] + ["llm_ask_image"] * self.image + ["llm_ask_audio"] * self.audio

    def entry(self, name: str | None = None, description: str | None = None) -> dict:
        """An `AllowedModel` (Gallery's model-list entry) for the file pushed to DEVICE_DIR."""
        modalities = "text" + ", vision" * self.image + ", audio" * self.audio
        return {
            "name": name or self.file_name.removesuffix(".litertlm"),
            "modelId": "local/" + self.file_name.removesuffix(".litertlm"),  # unused with the override; must be set
            "modelFile": self.file_name,
            "commitHash": self.sha256[:40],  # Gallery's "version" of the file
            "description": description or f"Built by gemma3n-edge; {modalities} input, {self.max_num_tokens} tokens "
                                          f"of context (sha256 {self.sha256[:12]}).",
            "sizeInBytes": self.size,
            "minDeviceMemoryInGb": self.min_device_memory_gb,
            "llmSupportImage": self.image,
            "llmSupportAudio": self.audio,
            "defaultConfig": {"topK": self.top_k, "topP": self.top_p, "temperature": self.temperature,
                              "maxTokens": self.max_num_tokens, "accelerators": "cpu",
                              # the CPU kernels parity checked (Gallery's default for vision is the GPU)
                              **({"visionAccelerator": "cpu"} if self.image else {})},
            "taskTypes": self.task_types(),
            "localModelFilePathOverride": f"{DEVICE_DIR}/{self.file_name}",
        }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or "0"))


def file_name_for(name: str) -> str:
    """A name Gallery accepts: ends in .litertlm, no "-web" (it would be taken for a web model)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name.removesuffix(".litertlm")).strip("-.") or "model"
    stem = re.sub(r"-web", "-w", stem, flags=re.IGNORECASE)
    return f"{stem}.litertlm"


def _ram_need(directory: Path | None, bundle_bytes: int) -> tuple[int, str]:
    from edge.device.install import WORKING_SET, ram_need

    if directory is not None and (directory / "manifest.json").is_file():
        from edge.bench import device_budget

        resident = device_budget(directory, "pixel8")["resident_total_bytes"]  # device-independent total
        return int(resident) + WORKING_SET, "edge/bench.py memory model of the artifacts + runtime working set"
    return ram_need(bundle_bytes), "edge/device/install.py estimate from the bundle size"


def describe(path: str | Path, name: str | None = None) -> GalleryModel:
    """Read what Gallery needs from an artifact directory (its model.litertlm) or a .litertlm file."""
    from edge.device.install import find_bundle
    from edge.fileio import sha256_file
    from edge.format.litertlm import check_structure, llm_metadata, read_bundle

    path = Path(path)
    bundle_file = find_bundle(path)
    bundle = read_bundle(bundle_file)
    problems = check_structure(bundle)
    if problems:
        raise UserError(f"{bundle_file}: not a bundle Gallery's engine can load:\n  " + "\n  ".join(problems))
    md = llm_metadata(bundle)
    if md is None or not md.max_num_tokens:
        raise UserError(f"{bundle_file}: no LlmMetadata with max_num_tokens; Gallery's engine needs one "
                        "(rebuild with `gemma3n-edge build`)")
    kinds = {s.model_type for s in bundle.sections}
    sp = md.sampler_params
    directory = path if path.is_dir() else None
    if name is None:  # the artifact directory's name says more than "model"
        name = bundle_file.parent.resolve().name if bundle_file.stem == "model" else bundle_file.stem
    ram, source = _ram_need(directory, bundle.size)
    return GalleryModel(
        bundle=bundle_file, file_name=file_name_for(name), size=bundle.size, sha256=sha256_file(bundle_file),
        image=_VISION in kinds, audio=_AUDIO in kinds, max_num_tokens=int(md.max_num_tokens),
        top_k=int(sp.k) or 1, top_p=round(float(sp.p), 6) or 1.0,  # float32 in the proto
        temperature=round(float(sp.temperature), 6) or 1.0,
        ram_need=ram, ram_source=source, min_runtime=md.min_runtime_version or "")


def instructions(m: GalleryModel, entry_file: str | None = None) -> list[str]:
    """The steps, with this bundle's values, for both ways in."""
    on = {True: "on", False: "off"}
    lines = [
        f"{m.bundle} -> Gallery as {m.file_name} ({m.size / 1e9:.2f} GB; needs about {m.ram_need / GIB:.1f} GiB "
        f"of RAM, a phone with {m.min_device_memory_gb} GB or more; LiteRT-LM {m.min_runtime or 'any'} or newer)",
        "",
        "Import it (Gallery 1.0.18):",
        f"  adb push {m.bundle} {IMPORT_DIR}/{m.file_name}",
        "  Gallery: menu > Models > + > From local model file > Download > " + m.file_name,
        f"  Import dialog: Support image {on[m.image]}, Support audio {on[m.audio]}, "
        f"Compatible accelerators CPU, Default max tokens {m.max_tokens}"
        + (f" (the engine stops at the bundle's {m.max_num_tokens}-token context anyway)"
           if m.max_tokens != m.max_num_tokens else ""),
        f"  sampling as the bundle's defaults: top-k {m.top_k}, top-p {m.top_p:g}, temperature {m.temperature:g}",
    ]
    if m.image:
        lines.append("  note: an imported model runs its vision encoder on the GPU (Gallery's default); "
                     "parity here covers the CPU kernels, which the list entry below selects")
    if not m.gallery_runtime_ok:
        lines.append(f"  WARNING: this bundle needs LiteRT-LM {m.min_runtime}; Gallery 1.0.18 ships {GALLERY_RUNTIME}, "
                     "which loads it but answers image and audio prompts differently (measured: "
                     "benchmarks/runtimes_demo_int8.json). For that Gallery build with --modalities text,vision "
                     "(the same answers on every runtime from 0.11.0), or use the demo app (gemma3n-edge install)")
    if entry_file:
        lines += [
            "",
            "Or list it (replaces Gallery's online model list until the file is removed):",
            f"  adb shell mkdir -p {DEVICE_DIR}",
            f"  adb push {m.bundle} {DEVICE_DIR}/{m.file_name}",
            f"  adb push {entry_file} {ALLOWLIST_ON_DEVICE}",
            "  restart Gallery; the model appears as downloaded",
        ]
    return lines
