"""Pure quantization math: tensors and configs in, tensors or dataclasses out."""
