"""parasim: a discrete-event simulator and cost model for distributed LLM inference strategies."""
__version__ = "0.1.0"
