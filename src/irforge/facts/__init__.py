"""What a model is: configs, tensor tables, TP rules, quantization schemes, targets, presets."""
