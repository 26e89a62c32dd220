"""The three OCR stages as batchery models. Each lane owns one ONNX Runtime session sized to its core share.

The five single-threaded lanes (two detector, one classifier, two recogniser) run their ONNX Runtime calls
inside `cores.core_slot()`, two at a time on two cores (measured against free-running lanes in
docs/performance.md, "OCR pipeline").

rapidocr's pre/post-processing helpers are reused as they are (its classes are created without their
`__init__`, which would load sessions of their own), so the text read is the text `RapidOCR()` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from batchery.cores import core_slot, granted_cores
from batchery.errors import InvalidInput
from batchery.examples.ocr import _rapidocr
from batchery.model import Model
from batchery.runtimes import onnx_impl


@dataclass(slots=True)
class Detected:
    """One image's text boxes (in the original image's pixels, reading order) and their upright-ish crops."""

    boxes: list[list[list[float]]]
    crops: list[Any]


@dataclass(slots=True)
class Oriented:
    """A crop after angle classification: turned upright when the classifier is confident it was upside down."""

    crop: Any
    label: str
    score: float


def _scaled(h: int, w: int, ratio: float) -> tuple[int, int]:
    """rapidocr's resize arithmetic: scale, then round each side to a multiple of 32."""
    return int(round(int(h * ratio) / 32) * 32), int(round(int(w * ratio) / 32) * 32)


def crop_array(item: Any, what: str) -> Any:
    """`item` when it is an HxWx3 uint8 array (a KServe V2 UINT8 tensor, or what the pipeline hands a stage).

    The stages are reachable on their own routes; anything else sent there is refused (422) instead of failing
    inside `predict`.
    """
    if not isinstance(item, np.ndarray) or item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
        got = f"an array of {item.dtype} {list(item.shape)}" if isinstance(item, np.ndarray) else type(item).__name__
        raise ValueError(
            f"this OCR stage takes {what} as an HxWx3 uint8 array (BGR), got {got}; "
            "to read an image, send it to /v1/models/ocr/predict"
        )
    if min(item.shape[:2]) < 1:
        raise ValueError(f"the array is {item.shape[1]}x{item.shape[0]} pixels: empty")
    return item


class TextDetector(Model):
    """DB text detection: BGR image in, its boxes and crops out. Same-sized images of a batch share a forward pass."""

    name = "ocr-det"
    #: ONNX Runtime intra-op threads per lane; None: the lane's share of the cores.
    threads: int | None = None
    # One image a forward pass: with core slots, batches of 2 same-sized images held a slot twice as long and made
    # p99 25% worse at no gain in throughput (docs/performance.md, "OCR pipeline").
    max_batch_size = 1
    example = np.full((64, 64, 3), 255, dtype=np.uint8)

    def setup(self, device: str) -> None:
        _rapidocr.package()
        from rapidocr_onnxruntime import RapidOCR
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector as RapidDetector
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        cfg = _rapidocr.config()
        glob, det = cfg["Global"], cfg["Det"]
        self.session = onnx_impl.load(det["model_path"], threads=self.threads or granted_cores(), device=device)
        self.input_name = self.session.get_inputs()[0].name
        self.ocr = object.__new__(RapidOCR)  # its geometry helpers only
        self.ocr.max_side_len, self.ocr.min_side_len = glob["max_side_len"], glob["min_side_len"]
        self.ocr.min_height, self.ocr.width_height_ratio = glob["min_height"], glob["width_height_ratio"]
        self.detector = object.__new__(RapidDetector)  # get_preprocess and filter_tag_det_res only
        self.detector.limit_side_len, self.detector.limit_type = det["limit_side_len"], det["limit_type"]
        self.detector.mean, self.detector.std = det["mean"], det["std"]
        keys = ("thresh", "box_thresh", "max_candidates", "unclip_ratio", "use_dilation", "score_mode")
        self.postprocess = DBPostProcess(**{key: det[key] for key in keys})

    #: The largest input the detector's network is given. rapidocr scales an image so that its shorter side
    #: reaches 736 pixels (after scaling tiny images up to 30): an elongated image (1x1000, 3000x2) becomes a
    #: tensor of hundreds of megapixels and gigabytes, enough to kill the process. Such images are refused.
    max_input_pixels = 16_000_000

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the network would be given for an image of this size, computed as rapidocr
        resizes and letterboxes it (`RapidOCR.preprocess`, `maybe_add_letterbox`, `DetPreProcess.resize`)."""
        glob, det = _rapidocr.config()["Global"], _rapidocr.config()["Det"]
        h, w = height, width
        if max(h, w) > glob["max_side_len"]:
            h, w = _scaled(h, w, glob["max_side_len"] / max(h, w))
        if 0 < min(h, w) < glob["min_side_len"]:
            h, w = _scaled(h, w, glob["min_side_len"] / min(h, w))
        ratio = glob["width_height_ratio"]
        if h > 0 and (h <= glob["min_height"] or w / h > ratio > 0):
            padded = max(int(w / ratio), glob["min_height"]) * 2
            h += 2 * int(abs(padded - h) / 2)
        if det["limit_type"] == "min" and 0 < min(h, w) < det["limit_side_len"]:
            h, w = _scaled(h, w, det["limit_side_len"] / min(h, w))
        return h, w

    def check_size(self, height: int, width: int) -> None:
        """Raise InvalidInput (422) for an image the detector cannot take (too thin, or too elongated)."""
        h, w = self.input_shape(height, width)
        if h <= 0 or w <= 0:
            raise InvalidInput(f"the image is {width}x{height} pixels: too thin to look for text in")
        if h * w > self.max_input_pixels:
            raise InvalidInput(
                f"the image is {width}x{height} pixels: the text detector would have to work on {w}x{h} "
                f"({h * w} pixels; the limit is {self.max_input_pixels}). Crop or pad such elongated images"
            )

    def decode_request(self, item: Any) -> Any:
        image = crop_array(item, "an image")
        try:
            self.check_size(image.shape[0], image.shape[1])
        except InvalidInput as exc:
            raise ValueError(exc.message) from exc
        return image

    def predict(self, batch: list[Any]) -> list[Any]:
        prepared = [self._prepare(image) for image in batch]
        maps: list[Any] = [None] * len(batch)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, (tensor, *_rest) in enumerate(prepared):
            if tensor is not None:
                by_shape.setdefault(tensor.shape, []).append(index)
        for indices in by_shape.values():  # one forward pass per distinct input size
            stacked = np.concatenate([prepared[i][0] for i in indices])
            with core_slot():
                output = self.session.run(None, {self.input_name: stacked})[0]
            for row, i in enumerate(indices):
                maps[i] = output[row : row + 1]
        return [self._boxes(image, prep, pred) for image, prep, pred in zip(batch, prepared, maps, strict=True)]

    def _prepare(self, image: Any) -> tuple[Any, Any, dict[str, Any]]:
        ocr = self.ocr
        img, ratio_h, ratio_w = ocr.preprocess(image)
        record: dict[str, Any] = {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
        img, record = ocr.maybe_add_letterbox(img, record)
        tensor = self.detector.get_preprocess(max(img.shape[0], img.shape[1]))(img)
        return tensor, img, record

    def _boxes(self, image: Any, prepared: tuple[Any, Any, dict[str, Any]], pred: Any) -> Detected:
        _, img, record = prepared
        if pred is None:
            return Detected([], [])
        boxes, _scores = self.postprocess(pred, img.shape[:2])
        boxes = self.detector.filter_tag_det_res(boxes, img.shape[:2])
        if boxes is None or len(boxes) < 1:
            return Detected([], [])
        boxes = self.ocr.sorted_boxes(boxes)
        crops = self.ocr.get_crop_img_list(img, boxes)
        origin = self.ocr._get_origin_points(boxes, record, image.shape[0], image.shape[1])
        return Detected(origin.tolist(), crops)


class AngleClassifier(Model):
    """Text-line orientation (0 or 180 degrees): crops in, upright crops out. Batches mix many images' crops."""

    name = "ocr-cls"
    max_batch_size = 64
    # A light stage: one single-threaded lane keeps up with the detector's lanes and leaves them the cores.
    workers = 1
    threads = 1
    example = np.full((48, 192, 3), 255, dtype=np.uint8)

    def setup(self, device: str) -> None:
        _rapidocr.package()
        from rapidocr_onnxruntime.ch_ppocr_cls import TextClassifier
        from rapidocr_onnxruntime.ch_ppocr_cls.utils import ClsPostProcess

        cls = _rapidocr.config()["Cls"]
        self.session = onnx_impl.load(cls["model_path"], threads=self.threads or granted_cores(), device=device)
        self.input_name = self.session.get_inputs()[0].name
        self.helper = object.__new__(TextClassifier)  # resize_norm_img only
        self.helper.cls_image_shape = cls["cls_image_shape"]
        self.threshold = float(cls["cls_thresh"])
        self.postprocess = ClsPostProcess(cls["label_list"])

    def decode_request(self, item: Any) -> Any:
        return crop_array(item, "a text-line crop")

    def predict(self, batch: list[Any]) -> list[Any]:
        import cv2

        tensor = np.stack([self.helper.resize_norm_img(crop) for crop in batch]).astype(np.float32)
        with core_slot():
            probabilities = self.session.run(None, {self.input_name: tensor})[0]
        outputs = []
        for crop, (label, score) in zip(batch, self.postprocess(probabilities), strict=True):
            if "180" in label and score > self.threshold:
                crop = cv2.rotate(crop, cv2.ROTATE_180)
            outputs.append(Oriented(crop, str(label), float(score)))
        return outputs


@dataclass(slots=True)
class Line:
    """A crop to recognise, and the width-to-height ratio it is padded to (see `padding_ratios`)."""

    crop: Any
    pad_ratio: float


def padding_ratios(crops: list[Any], height: int = 48, width: int = 320, chunk: int = 6) -> list[float]:
    """The ratio each of one image's crops is padded to when rapidocr recognises that image alone.

    rapidocr sorts an image's crops by aspect ratio and pads each chunk of 6 to its widest crop. The
    recogniser mixes global context, so the padding changes the text now and then: padding each crop as
    rapidocr would keeps the text identical, while crops of different images still share forward passes.
    """
    ratios = [crop.shape[1] / float(crop.shape[0]) for crop in crops]
    order = np.argsort(np.array(ratios))  # the same call as rapidocr's, so ties break the same way
    padded = [0.0] * len(crops)
    for start in range(0, len(crops), chunk):
        indices = order[start : start + chunk]
        widest = max([width / height, *(ratios[i] for i in indices)])
        for i in indices:
            padded[i] = widest
    return padded


def lines_for(crops: list[Any]) -> list[Line]:
    """One image's crops as the recogniser's `Line`s, each padded as rapidocr pads it (`padding_ratios`)."""
    return [Line(crop, ratio) for crop, ratio in zip(crops, padding_ratios(crops), strict=True)]


class TextRecognizer(Model):
    """SVTR recognition with CTC decoding: `Line`s in, (text, score) out.

    Lines padded to the same ratio share a forward pass (up to `chunk` at a time), whichever image they come
    from; a bare array is padded as rapidocr pads a lone crop.
    """

    name = "ocr-rec"
    max_batch_size = 64
    # The heaviest stage (about half of an image's compute): one single-threaded lane per core, like the detector.
    # With one lane it could use one core only, and it ran while the detector's lanes were starved for images:
    # 2.04 images/s at concurrency 16 against 2.41-2.95 with a lane per core (docs/performance.md).
    threads = 1
    chunk = 8
    example = np.full((48, 192, 3), 255, dtype=np.uint8)

    def setup(self, device: str) -> None:
        _rapidocr.package()
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer as RapidRecognizer
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

        rec = _rapidocr.config()["Rec"]
        self.session = onnx_impl.load(rec["model_path"], threads=self.threads or granted_cores(), device=device)
        self.input_name = self.session.get_inputs()[0].name
        self.helper = object.__new__(RapidRecognizer)  # resize_norm_img only
        self.helper.rec_image_shape = rec["rec_img_shape"]
        characters = self.session.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.decode = CTCLabelDecode(character=characters)

    def decode_request(self, item: Any) -> Any:
        return item if isinstance(item, Line) else crop_array(item, "a text-line crop")

    def predict(self, batch: list[Any]) -> list[Any]:
        _, height, width = self.helper.rec_image_shape
        lines = [
            item if isinstance(item, Line) else Line(item, padding_ratios([item], height, width)[0]) for item in batch
        ]
        groups: dict[float, list[int]] = {}
        for index, line in enumerate(lines):
            groups.setdefault(line.pad_ratio, []).append(index)
        results: list[Any] = [None] * len(batch)
        for ratio, members in groups.items():
            for start in range(0, len(members), self.chunk):
                indices = members[start : start + self.chunk]
                crops = [self.helper.resize_norm_img(lines[i].crop, ratio) for i in indices]
                with core_slot():
                    predictions = self.session.run(None, {self.input_name: np.stack(crops).astype(np.float32)})[0]
                for i, (text, score) in zip(indices, self.decode(predictions), strict=True):
                    results[i] = (str(text), float(score))
        return results
