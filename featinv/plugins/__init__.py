"""Built-in plugins, one module per built-in under ``plugins/<kind>/``.

Each module registers what it defines with its own ``@hookimpl def register_<kind>(register)``, exactly as
a third-party package does; :data:`featinv.registry.DEFAULT_PLUGINS` names them and the registry imports
them by name. The core never imports this package, and plugin modules never import each other.
"""
