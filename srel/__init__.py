"""Local elasticity (S_rel) of neural nets during training.

Implements "Dynamics of Local Elasticity During Training of Neural Nets" (Dan, Mukherjee, Das,
Gampa, arXiv 2111.01166) on top of the relative similarity S_rel of He & Su, "The Local
Elasticity of Neural Networks" (ICLR 2020). `utils.py` at the repository root re-exports the
public names, so notebooks need only `import utils`.
"""
