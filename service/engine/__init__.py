"""Engine: requests, sampling, scheduler (continuous batching), StreamingKVCache, detokenizer, async API."""
