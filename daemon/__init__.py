"""The radtriage process: CLI, config, receiver, scheduler jobs, workers, dispatch, shutdown."""
