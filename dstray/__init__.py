"""dstray: Defect Style Transfer and Buttonlab on Ray.

Implements Wei et al., "Defective samples simulation through Neural Style Transfer
for automatic surface defect segment" (see ``docs/design.md``).  Importing the package
does no work: no Ray start, no weights loaded, no directories created.
"""

__version__ = "0.2.0"
