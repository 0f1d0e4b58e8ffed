"""The Isolation Forest (``isolation_forest``) and the analysis consumer that trains and scores it (``consumer``)."""
