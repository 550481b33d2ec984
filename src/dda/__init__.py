"""dda: Debias and Denoise Attribution.

Trace what a fine-tuned causal LM says back to the training documents behind it.
Score orientation everywhere: arrays of shape (n_queries, n_train); HIGHER = MORE RESPONSIBLE.
"""

__version__ = "0.1.0"
