"""Policies: YAML rules over events, in three stages — parse, validate, evaluate.

    loader.load(paths) -> PolicySet          strict: any error raises PolicySetError (collector)
    loader.lint_paths(paths) -> (set, problems)   collect-all: every problem (policy lint)
    engine.PolicyEngine(set, timezone).evaluate(mapping) -> list[RaisedAlert]
    listener.PolicyListener                  the collector seam: evaluate, store, send to sinks
    reload.PolicyReloader                    hot reload on file change / SIGHUP, keeps the old set on error

Error codes are documented in errors.py; the language in docs/policies.md.
"""
