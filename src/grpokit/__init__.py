"""grpokit: group-relative RL post-training for language and flow-matching models.

Importing the package is cheap: no model library (transformers, peft, accelerate, diffusers) is
imported here. Import the sub-packages you need.
"""

__version__ = "0.1.0"
