"""Model core: GGUF reading, dequantization, quantization, tokenizer, chat template, the llama forward pass."""
