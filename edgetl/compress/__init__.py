"""Model compression: quantization (INT8/FP16) and structured pruning."""
