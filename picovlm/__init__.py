"""picovlm: super-small vision-language models, trained on one modest GPU or a CPU, served on one CPU core.

Importing the package is cheap on purpose: heavy modules (torch, the model) load only when used, so the
torch-free runtime (`picovlm.runtime`) stays torch-free.
"""

__version__ = "0.1.0"
