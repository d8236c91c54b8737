"""Brain tumour (lower-grade glioma) segmentation in MRI with a ResUNet.

Importing ``helpers`` registers the project's Keras losses and metrics, so a
saved model loads with ``keras.models.load_model``; it has no other side
effect. Modules: ``data``, ``synthetic``, ``preprocessing``, ``model``,
``losses``, ``metrics``, ``training``, ``evaluation``, ``plots``,
``inference``, ``predict``, ``app``, ``parameters``.
"""

from helpers import losses, model  # noqa: F401  (registers serializable objects)

__version__ = "0.1.0"
