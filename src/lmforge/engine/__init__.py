"""Generation for everyone: KV-cached, batched, sampled. Used by `lmforge generate`, evaluation,
training samples, and (in later stages) the server, red teaming and RL rollouts; it never
imports the server."""
