"""Weight quantization: recipes as data (`recipes`) and numpy quantizers matching ai-edge-quantizer (`quantize`)."""

from converters.quant.recipes import RECIPES, QuantSpec, Recipe, RecipeError, Rule, get_recipe

__all__ = ["RECIPES", "QuantSpec", "Recipe", "RecipeError", "Rule", "get_recipe"]
