"""Ensemble pipelines and the BLS API (models calling models). Not built yet: a configuration with
`ensemble_scheduling` is refused with a message that says so."""
