"""OCR as a batchery pipeline on the ONNX models of `rapidocr-onnxruntime`: `batchery serve ocr`.

Three stages, each an ordinary model with its own batcher and lanes: text detection (one image gives N
boxes), angle classification and recognition (batches mix the boxes of many images).
"""

from batchery.examples.ocr.pipeline import OcrPipeline
from batchery.examples.ocr.stages import AngleClassifier, TextDetector, TextRecognizer

__all__ = ["AngleClassifier", "OcrPipeline", "TextDetector", "TextRecognizer"]
