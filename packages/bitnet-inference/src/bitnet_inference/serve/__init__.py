"""`bitnet serve`: an OpenAI-compatible HTTP server with continuous batching.

    engine = Engine(Model(path, n_slots=4), tokenizer, n_parallel=4)
    app = create_app(engine, tokenizer, ServerConfig(model_id="my-model"))   # an ASGI app (Starlette)

engine.py is the scheduler (no HTTP), schemas.py checks request bodies, app.py is the HTTP layer,
commands.py the `bitnet serve` command.
"""
