"""The OpenAI-compatible HTTP server: protocol models, handlers, thin routes, one error mapper.

Importing this package is cheap; `create_app(settings)` loads the model and opens the store.
"""
