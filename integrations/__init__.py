"""kvferry inside serving engines: connectors that make an engine move embeddings through kvferry."""
