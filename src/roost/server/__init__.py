"""HTTP/SSE API on FastAPI: routes, problem+json errors, SSE, serving with graceful drain."""
