"""gemma3n-edge, torch side: config, checkpoint reading, slicing, lowering, quantization."""
