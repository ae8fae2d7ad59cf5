"""Text and tokens: sources (files, folders, Hugging Face datasets), the tokenizer, preparation into shards, the
shards read back for training, and chat data."""
