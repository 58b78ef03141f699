"""The one-shot concept server: LitServe inference workers, HTTP API, task store, auth and limits."""
