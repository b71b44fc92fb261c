"""Local elasticity (S_rel) of neural nets during training.

Implements "Dynamics of Local Elasticity During Training of Neural Nets" (Dan, Mukherjee, Das,
Gampa, arXiv 2111.01166) on top of the relative similarity S_rel of He & Su, "The Local
Elasticity of Neural Networks" (ICLR 2020). `utils.py` at the repository root re-exports the
public names, so notebooks need only `import utils`.
"""
import os

# NOTE: MKL splits matrix products across threads in a run-dependent order unless told not to,
# so two identical CPU runs gave ResNet-18 gradients (hence S_rel) differing in the 7th digit.
# Strict conditional numerical reproducibility costs no measurable time; it must be set before
# the first MKL call, hence here. Set MKL_CBWR in the environment to choose otherwise.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
