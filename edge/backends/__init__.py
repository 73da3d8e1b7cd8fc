"""Inference backends. Heavy libraries are imported only inside the backend that needs
them, so `import edge` works with none of them installed."""
