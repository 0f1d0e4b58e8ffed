"""The aggregator's analysis stage: what happens to a batch once it is durably accepted."""
