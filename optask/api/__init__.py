"""The HTTP read side, `optask serve`: every stored minute over HTTP (DESIGN section 9).

    app       the FastAPI application: docs from the package, the token gate, errors as JSON
    routes    /v1 endpoints: indices, chain, summary, legs, coverage
    params    what a request may ask for, each refusal naming its parameter
    catalog   the Parquet dataset read without a lock: days, minutes, a minute's rows, cached day tables
    chain     one minute's chain from stored rows (OI and LTP changes), pure
    history   ranges a page at a time, page cursors
    formats   JSON, CSV, Arrow IPC, Parquet, streamed a day at a time
    coverage  per day: minutes per store, gaps, end-of-day verdict, repairs
    tokens    API tokens (stored hashed) and the shared rate limit
    state     what a process learns from the ledger's event stream; answers kept until they change
    server    runs it on uvicorn
"""
