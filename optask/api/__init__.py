"""The HTTP read side, `optask serve`: every stored minute over HTTP (DESIGN section 9).

    app       the FastAPI application: docs from the package, errors as JSON, /healthz, start and stop
    gate      the token gate in front of it: tokens, the rate limit, failed authentications per address
    routes    /v1 endpoints: indices, chain, summary, legs, coverage
    params    what a request may ask for, each refusal naming its parameter
    catalog   the Parquet dataset read without a lock: days, minutes, a minute's rows, cached day tables
    chain     one minute's chain from stored rows (OI and LTP changes), pure
    history   ranges a page at a time, page cursors
    formats   JSON, CSV, Arrow IPC, Parquet, written from Arrow a few thousand rows at a time
    coverage  per day: minutes per store, gaps, end-of-day verdict, repairs
    tokens    API tokens (stored hashed), the shared rate limit, the page's logins (bounded per token)
    live      the push hub: each stored minute to every subscriber, payloads built once, off the event loop
    replay    what a returning subscriber is owed from the stream in Redis (at most API_REPLAY_MAX events)
    stream    /v1/stream and /v1/ws, bounded per token and process; /v1/session, the page's login
    state     what a process learns from the ledger's event stream; answers kept until they change
    server    runs it on uvicorn (proxy headers, a graceful stop)
"""
