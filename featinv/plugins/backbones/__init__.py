"""Built-in backbones plugins, one module per built-in (see featinv.registry.DEFAULT_PLUGINS)."""
