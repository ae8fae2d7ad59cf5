"""Using a trained model: generation with a KV cache, sampling on the device, quantized weights, the batched serving
engine, conversations and the OpenAI-compatible server."""
