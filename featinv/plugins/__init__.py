"""Built-in plugins, registered with ``@hookimpl`` exactly as a third-party package registers its own."""
