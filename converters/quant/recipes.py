"""Quantization recipes as data: ordered rules, first applicable match wins.

A rule matches a weight on three things:
- the component being built (`decoder`, `embedder`, `per_layer_embedder`, `vision_encoder`,
  ... — LiteRT-LM's section names; a glob, `*` = any);
- the weight's name (a regex, full match, on the checkpoint-style parameter name);
- the kinds of op the weight feeds, as the lowered graph shows them: `FULLY_CONNECTED` (the
  weight operand of a matmul), `EMBEDDING_LOOKUP` (a table), or `OTHER` (anything else: an
  RMSNorm weight in a MUL, a bias, a table read by GATHER_ND, a coefficient matrix in a
  BATCH_MATMUL). A rule applies when every kind the weight feeds is in the rule's `ops`;
plus a size floor, `min_weight_elements`, so tiny matrices stay float.

A rule whose format cannot hold the weight (int4 blockwise on an input dimension that is not
a multiple of the block, or any integer format on an OTHER weight — the runtime has integer
kernels only for FULLY_CONNECTED and EMBEDDING_LOOKUP weights) is skipped and the next rule is
tried: that is how a recipe says "int4, else int8, else float". Every recipe ends with a
catch-all float rule, so every weight gets a format.

What the runtime supports (ai-edge-litert 2.3.0, checked in tests/test_lowering.py): dynamic
int8 per-channel and int4 blockwise FULLY_CONNECTED run in XNNPACK; int8 and int4 blockwise
EMBEDDING_LOOKUP run in the builtin kernel; float16 weights get a DEQUANTIZE that XNNPACK folds.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from converters.quant.quantize import check_blockwise
from edge.errors import UserError, lookup

FC, EMB, OTHER = "FULLY_CONNECTED", "EMBEDDING_LOOKUP", "OTHER"
OP_KINDS = frozenset({FC, EMB, OTHER})
QUANTIZABLE = frozenset({FC, EMB})
TINY = 1024  # elements; AEQ's legacy floor. AltUp's 4x4 / 16x4 coefficient matrices are far below


class RecipeError(UserError):
    """Unknown recipe or a malformed rule."""


@dataclass(frozen=True)
class QuantSpec:
    """The stored format of one weight."""

    # "fp32", "fp16", "int8" (per output channel) or "int4" (blockwise along the input dim)
    dtype: str
    # int4 only: elements per block (32, 64, 128 or 256); 0 = one scale per output channel
    block_size: int = 0

    def __post_init__(self):
        if self.dtype not in ("fp32", "fp16", "int8", "int4"):
            raise RecipeError(f"unknown weight format {self.dtype!r}: use fp32, fp16, int8 or int4")
        if self.block_size and self.dtype != "int4":
            raise RecipeError(f"{self.dtype} with block_size={self.block_size}: only int4 has blocks")

    @property
    def label(self) -> str:
        if self.dtype == "int4":
            return f"int4-b{self.block_size}" if self.block_size else "int4-pc"
        return self.dtype

    def unsupported(self, shape: tuple[int, ...], kinds: frozenset[str]) -> str | None:
        """Why this format cannot hold a weight of `shape` feeding `kinds`, or None."""
        if self.dtype in ("int8", "int4"):
            if not kinds <= QUANTIZABLE:
                return f"it feeds {sorted(kinds - QUANTIZABLE)} ops, which have no integer-weight kernel"
            if len(shape) != 2:
                return f"integer formats need a 2-D weight, not shape {tuple(shape)}"
        if self.dtype == "int4" and self.block_size:
            return check_blockwise(shape, self.block_size)
        if self.dtype == "int4" and shape[1] % 2:
            return f"the input dimension {shape[1]} is odd: int4 rows pack two values per byte"
        return None


FP32, FP16, INT8 = QuantSpec("fp32"), QuantSpec("fp16"), QuantSpec("int8")
INT4_B32, INT4_B128, INT4_PC = QuantSpec("int4", 32), QuantSpec("int4", 128), QuantSpec("int4")


@dataclass(frozen=True)
class Rule:
    spec: QuantSpec
    why: str  # the reason, shown in reports next to each weight it decided
    component: str = "*"  # glob on the component name
    name: str = ".*"  # regex, full match, on the weight name
    ops: frozenset[str] = OP_KINDS  # the weight must feed only these op kinds
    min_weight_elements: int = 0

    def __post_init__(self):
        if not self.ops <= OP_KINDS:
            raise RecipeError(f"rule ops {sorted(self.ops)}: known kinds are {sorted(OP_KINDS)}")
        re.compile(self.name)

    def matches(self, component: str, name: str, shape: tuple[int, ...], kinds: frozenset[str]) -> bool:
        size = 1
        for d in shape:
            size *= d
        return (
            fnmatch.fnmatchcase(component, self.component)
            and re.fullmatch(self.name, name) is not None
            and kinds <= self.ops
            and size >= self.min_weight_elements
        )


@dataclass(frozen=True)
class Decision:
    spec: QuantSpec
    rule: int  # index of the rule that decided
    why: str
    skipped: tuple[str, ...] = field(default=())  # rules that matched but could not hold the weight


@dataclass(frozen=True)
class Recipe:
    name: str
    rules: tuple[Rule, ...]
    doc: str = ""

    def decide(self, component: str, name: str, shape: tuple[int, ...], kinds: frozenset[str]) -> Decision:
        """The format of one weight: the first rule that matches and whose format can hold it."""
        if not kinds:
            kinds = frozenset({OTHER})
        skipped = []
        for i, rule in enumerate(self.rules):
            if not rule.matches(component, name, tuple(shape), kinds):
                continue
            why_not = rule.spec.unsupported(tuple(shape), kinds)
            if why_not:
                skipped.append(f"rule {i} ({rule.spec.label}): {why_not}")
                continue
            return Decision(rule.spec, i, rule.why, tuple(skipped))
        raise RecipeError(
            f"recipe {self.name!r} has no rule for weight {name!r} {tuple(shape)} feeding {sorted(kinds)} "
            f"in component {component!r}" + (f" ({'; '.join(skipped)})" if skipped else "")
            + ": end the recipe with a catch-all float rule."
        )


# ---------------------------------------------------------------------------------------------
# The rules every integer recipe starts with.

_FLOAT_OTHER = Rule(FP32, "feeds a non-matmul op (norm weight, bias, coefficient matrix): no integer kernel", ops=frozenset({OTHER}))
# Quantizing rules carry min_weight_elements=TINY, so tiny matrices fall through to this one.
_CATCH_ALL = Rule(FP32, f"kept float: fewer than {TINY} elements (e.g. AltUp coefficients), or no format above fits")


def _int_recipe(name: str, spec: QuantSpec, doc: str) -> Recipe:
    rules = [Rule(spec, f"{spec.label} for matmul weights and tables: {doc}", ops=QUANTIZABLE, min_weight_elements=TINY)]
    if spec.dtype == "int4" and spec.block_size:
        rules.append(Rule(INT8, "the input dimension is not a multiple of the int4 block: int8 per channel instead",
                          ops=QUANTIZABLE, min_weight_elements=TINY))
    return Recipe(name, (_FLOAT_OTHER, *rules, _CATCH_ALL), doc)


RECIPES: dict[str, Recipe] = {
    "fp32": Recipe("fp32", (Rule(FP32, "fp32 recipe: weights stored as trained (float32)"),),
                   "float32 weights, the reference"),
    "fp16": Recipe("fp16", (
        _FLOAT_OTHER,
        Rule(FP16, "fp16 recipe: matmul weights and tables cast to float16 (DEQUANTIZE, folded by XNNPACK)",
             ops=QUANTIZABLE, min_weight_elements=TINY),
        _CATCH_ALL,
    ), "float16 weights (float casting), float32 compute"),
    "int8": _int_recipe("int8", INT8, "dynamic range, per output channel"),
    "int4": _int_recipe("int4", INT4_B32, "dynamic range, blockwise 32"),
    "int4-pc": Recipe("int4-pc", (
        _FLOAT_OTHER,
        Rule(INT4_PC, "decoder matmuls int4 per output channel (XNNPACK qc4w: no block scales to read per step)",
             component="decoder", ops=frozenset({FC}), min_weight_elements=TINY),
        Rule(INT4_B32, "tables int4-b32 as in the int4 recipe (a row per token)", ops=frozenset({EMB}),
             min_weight_elements=TINY),
        Rule(INT8, "the input dimension is not a multiple of the int4 block: int8 per channel instead",
             ops=QUANTIZABLE, min_weight_elements=TINY),
        _CATCH_ALL,
    ), "decoder matmuls int4 per channel, tables int4-b32, towers int8, norms and tiny matrices float"),
    "int4-b128": _int_recipe("int4-b128", INT4_B128, "dynamic range, blockwise 128 (smaller scales, ~1% more error)"),
    "mixed": Recipe("mixed", (
        _FLOAT_OTHER,
        Rule(INT4_B32, "PLE table: 2B of E2B's 5.4B params, read a row per token; int4-b32 costs little accuracy",
             component="per_layer_embedder", ops=frozenset({EMB}), min_weight_elements=TINY),
        Rule(INT8, "token embedding table: every token's input; int8 per row keeps it near float",
             component="embedder", ops=frozenset({EMB}), min_weight_elements=TINY),
        Rule(INT8, "tied lm_head (embed_tokens) in the decoder: logits are the most error-sensitive matmul",
             component="decoder", name=r".*embed_tokens\.weight", ops=QUANTIZABLE, min_weight_elements=TINY),
        Rule(INT4_B32, "decoder matmuls: the bulk of the compute and of the file; int4-b32 as Google ships",
             component="decoder", ops=QUANTIZABLE, min_weight_elements=TINY),
        Rule(INT8, "everything else (vision/audio towers, adapters, int4 shapes that do not divide): int8 per channel",
             ops=QUANTIZABLE, min_weight_elements=TINY),
        _CATCH_ALL,
    ), "PLE int4-b32, embedder int8, decoder int4-b32 with an int8 lm_head, towers int8, norms and tiny matrices float"),
}


def get_recipe(name: str | Recipe) -> Recipe:
    """The named recipe; an unknown name is a UserError listing the known ones."""
    if isinstance(name, Recipe):
        return name
    return lookup(RECIPES, name, "quantization recipe", RecipeError)


@dataclass(frozen=True)
class RecipeChoice:
    """What `--recipe` asks for, parsed once: a recipe for the build and per-artifact overrides,
    `int4,vision=int8,audio_encoder=fp16` (keys: a modality or an artifact's name)."""

    default: str
    overrides: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | RecipeChoice) -> RecipeChoice:
        if isinstance(text, RecipeChoice):
            return text
        default, *rest = [part.strip() for part in str(text).split(",")]
        overrides = []
        for part in rest:
            key, eq, name = part.partition("=")
            if not eq or not key or "=" in name:
                raise RecipeError(f"--recipe {text}: {part!r} is not KEY=RECIPE; write e.g. int4,vision=int8")
            overrides.append((key.strip(), name.strip()))
        for name in (default, *(n for _, n in overrides)):
            get_recipe(name)  # unknown names fail here, listing the known ones
        keys = [k for k, _ in overrides]
        if len(set(keys)) != len(keys):
            raise RecipeError(f"--recipe {text}: a key is given twice")
        return cls(default, tuple(overrides))

    def check_keys(self, known: set[str]) -> None:
        """Every override names a modality or an artifact of this build."""
        unknown = [k for k, _ in self.overrides if k not in known]
        if unknown:
            raise RecipeError(f"--recipe {self}: {', '.join(unknown)} is not a modality or artifact of this build; "
                              f"choose from {', '.join(sorted(known))}")

    def for_component(self, component) -> str:
        """The recipe name one component is built with: an override by its name, key or modality,
        else the build's recipe through the component's default precision rule."""
        chosen = dict(self.overrides)
        for key in (component.name, component.key, component.modality):
            if key in chosen:
                return chosen[key]
        return component.precision(self.default)

    def __str__(self) -> str:
        return ",".join([self.default, *(f"{k}={v}" for k, v in self.overrides)])
