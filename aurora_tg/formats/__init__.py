"""What Aurora reads and writes on disk: checkpoints, atomic files and checksummed safetensors, Hugging Face's GPT-2
layout and GGUF."""
