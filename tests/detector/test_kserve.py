"""The detector's KServe v2 endpoint (``inference.GRPCInferenceService``) through the real gateway, called
with tritonclient.grpc as Triton and KServe users do: the raw model against ONNX Runtime on the same
tensors, ``car-detector-e2e`` against Detect on the same images, and hostile tensors."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from carmesh.kserve import SERVICE_NAME, protocol
from carmesh.v1 import detector_pb2, detector_pb2_grpc
from tests.gateway.support import ADMIN_KEY, DETECT_KEY, READER_KEY, bearer, keys_file_text, run_gateway
from tests.helpers import DaemonProcess, free_port
from tests.onnx_factory import yolov8_raw

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

MODEL = "car-detector"
E2E = "car-detector-e2e"
INPUT_HW = (64, 64)
MAX_BATCH = 4
HEADERS = {"authorization": f"Bearer {DETECT_KEY}"}


def pixel_model(path: Path) -> Path:
    """A YOLOv8-layout model (2 classes, 8 anchors) whose boxes and scores move with each image's mean
    colour, so different images give different detections: [N,3,H,W] -> mean [N,3] @ W + raw."""
    rng = np.random.default_rng(18)
    boxes = [(12 + 5 * i, 10 + 6 * i, 10 + i, 8 + 2 * i) for i in range(8)]
    raw = yolov8_raw(boxes, [[0.3 + 0.07 * i, 0.6 - 0.06 * i] for i in range(8)])
    weights = rng.normal(0, 1, (3, 6, 8)).astype(np.float32)
    weights[:, :4] *= 12.0  # boxes move by pixels
    weights[:, 4:] *= 0.5  # scores move across the 0.25 threshold
    height, width = INPUT_HW
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 6, 8])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0, axes=[2, 3]),
        helper.make_node("MatMul", ["mean", "weights"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["delta"]),
        helper.make_node("Add", ["delta", "raw"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(weights.reshape(3, 48), "weights"),
        numpy_helper.from_array(np.array([-1, 6, 8], np.int64), "shape"),
        numpy_helper.from_array(raw.astype(np.float32), "raw"),
    ]
    graph = helper.make_graph(nodes, "pixel_detector", [images], [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "names", str({0: "car", 1: "truck"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def encoded(seed: int, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    tint = rng.integers(0, 256, 3)
    pixels = np.clip(rng.integers(0, 80, (size[1], size[0], 3)) + tint, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A detector serving the pixel model as ``car-detector``, behind a gateway: (gateway address, model)."""
    folder = tmp_path_factory.mktemp("kserve")
    model = pixel_model(folder / f"{MODEL}.onnx")
    keys_file = folder / "api-keys.txt"
    keys_file.write_text(keys_file_text())
    args = ["--model-path", str(model), "--max-batch-size", str(MAX_BATCH), "--metrics-port", "0"]
    with ExitStack() as stack:
        detector = stack.enter_context(DaemonProcess("detector", args))
        # No rate limit: the fuzz below is many calls in a row, and what it checks is the detector's answers.
        no_limit = ("--rate-limit-rps", "0")
        gateway = stack.enter_context(run_gateway(keys_file, f"127.0.0.1:{free_port()}", detector.address, *no_limit))
        yield gateway.address, model


@pytest.fixture
def client(mesh: tuple[str, Path]) -> Iterator[Any]:
    with tritonclient_grpc.InferenceServerClient(url=mesh[0]) as triton:
        yield triton


def test_server_and_model_metadata(client):
    assert client.is_server_live(headers=HEADERS) and client.is_server_ready(headers=HEADERS)
    assert client.is_model_ready(MODEL, headers=HEADERS) and client.is_model_ready(E2E, headers=HEADERS)
    assert not client.is_model_ready("other-model", headers=HEADERS)
    assert client.get_server_metadata(headers=HEADERS).name == "carmesh-detector"
    raw = client.get_model_metadata(MODEL, headers=HEADERS)
    assert raw.platform == "onnxruntime_onnx" and len(raw.versions) == 1
    assert [(t.name, t.datatype, list(t.shape)) for t in raw.inputs] == [("images", "FP32", [-1, 3, 64, 64])]
    assert [(t.name, t.datatype, list(t.shape)) for t in raw.outputs] == [("output0", "FP32", [-1, 6, 8])]
    e2e = client.get_model_metadata(E2E, headers=HEADERS)
    assert [(t.name, t.datatype) for t in e2e.inputs] == [("IMAGE", "BYTES")]
    assert [t.name for t in e2e.outputs] == ["BOXES", "SCORES", "CLASSES", "COUNTS"]
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("other-model", headers=HEADERS)
    assert "NOT_FOUND" in str(missing.value.status())


def test_raw_tensors_match_onnx_runtime(mesh, client):
    _, model = mesh
    batch = np.random.default_rng(3).random((3, 3, *INPUT_HW), dtype=np.float32)
    tensor = tritonclient_grpc.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer(MODEL, [tensor], headers=HEADERS)
    got = result.as_numpy("output0")
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    assert got.shape == (3, 6, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], got[1]), "the images differ, so must their outputs"


def _detect(address: str, image: bytes, **options: Any) -> detector_pb2.DetectResponse:
    with grpc.insecure_channel(address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        return stub.Detect(detector_pb2.DetectRequest(image=image, **options), metadata=bearer(DETECT_KEY), timeout=30)


def _e2e(client: Any, images: list[bytes], parameters: dict[str, Any] | None = None) -> Any:
    tensor = tritonclient_grpc.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return client.infer(E2E, [tensor], headers=HEADERS, parameters=parameters)


@pytest.mark.parametrize(
    ("parameters", "options"),
    [(None, {}), ({"score_threshold": 0.5, "classes": "truck"}, {"score_threshold": 0.5, "classes": ["truck"]})],
)
def test_e2e_gives_the_detections_of_detect(mesh, client, parameters, options):
    gateway, _ = mesh
    images = [encoded(1, (640, 360)), encoded(2, (300, 500), "JPEG"), encoded(3, (64, 64))]
    result = _e2e(client, images, parameters)
    boxes, scores, classes, counts = (result.as_numpy(n) for n in ("BOXES", "SCORES", "CLASSES", "COUNTS"))
    names = json.loads(result.get_response().parameters["class_names"].string_param)
    assert names == ["car", "truck"]
    assert boxes.shape == (3, counts.max(), 4) and scores.shape == classes.shape == (3, counts.max())
    seen = set()
    for i, image in enumerate(images):
        reply = _detect(gateway, image, **options)
        k = int(counts[i])
        assert k == len(reply.detections)
        want = [(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in reply.detections]
        np.testing.assert_allclose(boxes[i, :k], np.array(want, np.float32).reshape(k, 4), atol=1e-3)
        np.testing.assert_allclose(scores[i, :k], [d.score for d in reply.detections], atol=1e-5)
        assert classes[i, :k].tolist() == [d.class_id for d in reply.detections]
        assert (classes[i, k:] == -1).all() and (scores[i, k:] == 0).all()
        seen.add(tuple(classes[i, :k].tolist()))
    if options.get("classes"):
        assert set(classes[classes >= 0].tolist()) <= {1}
    assert counts.sum() > 0


def _status(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as failure:
        call()
    return str(failure.value.status()), str(failure.value.message())


def test_bad_tensors_are_invalid_argument(client):
    def raw(shape: list[int], data: np.ndarray, name: str = "images", datatype: str = "FP32") -> Any:
        tensor = tritonclient_grpc.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(data)
        return lambda: client.infer(MODEL, [tensor], headers=HEADERS)

    good = np.zeros((1, 3, *INPUT_HW), np.float32)
    cases = {
        "wrong size": raw([1, 3, 32, 32], np.zeros((1, 3, 32, 32), np.float32)),
        "wrong name": raw([1, 3, *INPUT_HW], good, name="pixels"),
        "wrong type": raw([1, 3, *INPUT_HW], good.astype(np.int32), datatype="INT32"),
        "NaN": raw([1, 3, *INPUT_HW], np.full_like(good, np.nan)),
        "batch too big": raw([MAX_BATCH + 1, 3, *INPUT_HW], np.zeros((MAX_BATCH + 1, 3, *INPUT_HW), np.float32)),
        "not an image": lambda: _e2e(client, [b"not an image"]),
        "unknown parameter": lambda: _e2e(client, [encoded(1, (32, 32))], {"score_treshold": 0.5}),
        "threshold out of range": lambda: _e2e(client, [encoded(1, (32, 32))], {"score_threshold": 2.0}),
        "unknown class": lambda: _e2e(client, [encoded(1, (32, 32))], {"classes": "bus"}),
    }
    for what, call in cases.items():
        status, message = _status(call)
        assert status == "StatusCode.INVALID_ARGUMENT", (what, status, message)
    status, message = _status(lambda: client.infer(MODEL, [], headers=HEADERS))
    assert status == "StatusCode.INVALID_ARGUMENT" and "takes one input 'images'" in message
    output = tritonclient_grpc.InferRequestedOutput("boxes")
    status, message = _status(lambda: _e2e_with_outputs(client, [output]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "no output" in message


def _e2e_with_outputs(client: Any, outputs: list[Any]) -> Any:
    tensor = tritonclient_grpc.InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([encoded(1, (32, 32))], dtype=np.object_))
    return client.infer(E2E, [tensor], outputs=outputs, headers=HEADERS)


def test_malformed_raw_bytes_and_scopes(mesh):
    """Requests no well-behaved client builds, sent with the protocol's own messages."""
    gateway, _ = mesh
    proto = protocol()
    request_type, response_type = proto.request_type("ModelInfer"), proto.response_type("ModelInfer")
    with grpc.insecure_channel(gateway) as channel:
        infer = channel.unary_unary(
            f"/{SERVICE_NAME}/ModelInfer",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

        def call(request: Any, key: str | None = DETECT_KEY) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as failure:
                infer(request, metadata=bearer(key) if key else (), timeout=30)
            return failure.value.code()

        claims_too_much = request_type(model_name=E2E, raw_input_contents=[struct.pack("<I", 1000) + b"abc"])
        claims_too_much.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
        assert call(claims_too_much) == grpc.StatusCode.INVALID_ARGUMENT
        short = request_type(model_name=MODEL, raw_input_contents=[b"\x00" * 10])
        short.inputs.add(name="images", datatype="FP32", shape=[1, 3, *INPUT_HW])
        assert call(short) == grpc.StatusCode.INVALID_ARGUMENT
        huge = request_type(model_name=MODEL, raw_input_contents=[b"\x00" * 12])
        huge.inputs.add(name="images", datatype="FP32", shape=[2**40, 3, *INPUT_HW])
        assert call(huge) == grpc.StatusCode.INVALID_ARGUMENT
        two_sources = request_type(model_name=E2E, raw_input_contents=[b""])
        two_sources.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
        assert call(two_sources) == grpc.StatusCode.INVALID_ARGUMENT
        wrong_version = request_type(model_name=MODEL, model_version="999")
        assert call(wrong_version) == grpc.StatusCode.NOT_FOUND
        assert call(short, key=None) == grpc.StatusCode.UNAUTHENTICATED
        assert call(short, key=READER_KEY) == grpc.StatusCode.PERMISSION_DENIED
        # Typed contents instead of raw bytes work as well.
        typed = request_type(model_name=MODEL)
        tensor = typed.inputs.add(name="images", datatype="FP32", shape=[1, 3, *INPUT_HW])
        tensor.contents.fp32_contents.extend([0.5] * (3 * INPUT_HW[0] * INPUT_HW[1]))
        reply = infer(typed, metadata=bearer(ADMIN_KEY), timeout=30)
        assert [list(o.shape) for o in reply.outputs] == [[1, 6, 8]] and len(reply.raw_output_contents[0]) == 6 * 8 * 4


def test_generated_requests_get_no_internal_error(mesh):
    """Structured fuzz of ModelInfer (names, datatypes, shapes, raw and typed contents, parameters near the
    valid ones): every answer is OK or a client error, never INTERNAL or UNKNOWN."""
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st

    gateway, _ = mesh
    proto = protocol()
    request_type, response_type = proto.request_type("ModelInfer"), proto.response_type("ModelInfer")
    pixels = 3 * INPUT_HW[0] * INPUT_HW[1]
    dims = st.sampled_from([0, 1, 2, 3, MAX_BATCH + 1, 64, -1, 2**40])
    shapes = st.one_of(
        st.lists(dims, max_size=5),
        st.tuples(st.integers(0, MAX_BATCH + 1)).map(lambda t: [t[0], 3, *INPUT_HW]),
    )
    framed = st.lists(st.binary(max_size=40), max_size=5).map(
        lambda items: b"".join(struct.pack("<I", len(i)) + i for i in items)
    )
    raw_bytes = st.one_of(st.binary(max_size=64), framed, st.just(b"\x00" * (pixels * 4)), st.just(encoded(5, (8, 8))))
    values = st.one_of(
        st.builds(lambda v: ("double_param", v), st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(lambda v: ("int64_param", v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: ("string_param", v), st.text(max_size=20)),
        st.builds(lambda v: ("bool_param", v), st.booleans()),
    )
    keys = st.sampled_from(["score_threshold", "iou_threshold", "max_detections", "classes", "priority", "x"])

    @st.composite
    def infer_requests(draw: Any) -> Any:
        request = request_type(model_name=draw(st.sampled_from([MODEL, E2E, MODEL, E2E, "other"])))
        for _ in range(draw(st.integers(0, 2))):
            tensor = request.inputs.add(
                name=draw(st.sampled_from(["images", "IMAGE", "x"])),
                datatype=draw(st.sampled_from(["FP32", "BYTES", "INT32", "FP16", ""])),
                shape=draw(shapes),
            )
            if draw(st.booleans()):
                tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
                tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=3)))
        if draw(st.booleans()):
            request.raw_input_contents.extend(draw(st.lists(raw_bytes, max_size=3)))
        for key, (kind, value) in draw(st.dictionaries(keys, values, max_size=3)).items():
            setattr(request.parameters[key], kind, value)
        for name in draw(st.lists(st.sampled_from(["BOXES", "output0", "nope"]), max_size=2)):
            request.outputs.add(name=name)
        return request

    codes: dict[str, int] = {}
    with grpc.insecure_channel(gateway) as channel:
        infer = channel.unary_unary(
            f"/{SERVICE_NAME}/ModelInfer",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

        @seed(18)
        @settings(
            max_examples=200,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(infer_requests())
        def check(request: Any) -> None:
            try:
                infer(request, metadata=bearer(DETECT_KEY), timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
                assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (request, error.details())
            codes[code.name] = codes.get(code.name, 0) + 1

        check()
    assert codes.get("INVALID_ARGUMENT", 0) > 50 and sum(codes.values()) == 200, codes


def test_e2e_matches_detect_with_yolox_nano_on_real_frames(shared_dir: Path, tmp_path: Path) -> None:
    """The same on a real detector and real frames: YOLOX-nano (COCO) on apollo-cars val."""
    from carmesh_cli.names import COCO_NAMES

    model = shared_dir / "models" / "yolox_nano.onnx"
    frames = sorted((shared_dir / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))[:3]
    keys_file = tmp_path / "api-keys.txt"
    keys_file.write_text(keys_file_text())
    args = ["--model-path", str(model), "--model-family", "yolox", "--class-names", ",".join(COCO_NAMES)]
    with (
        DaemonProcess("detector", args) as detector,
        run_gateway(keys_file, f"127.0.0.1:{free_port()}", detector.address) as gateway,
        tritonclient_grpc.InferenceServerClient(url=gateway.address) as client,
    ):
        images = [frame.read_bytes() for frame in frames]
        tensor = tritonclient_grpc.InferInput("IMAGE", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
        result = client.infer("yolox_nano-e2e", [tensor], headers=HEADERS, parameters={"classes": "car"})
        boxes, scores, counts = result.as_numpy("BOXES"), result.as_numpy("SCORES"), result.as_numpy("COUNTS")
        assert counts.min() > 0, "apollo-cars frames have cars"
        for i, image in enumerate(images):
            reply = _detect(gateway.address, image, classes=["car"])
            k = int(counts[i])
            assert k == len(reply.detections)
            want = np.array([(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in reply.detections], np.float32)
            np.testing.assert_allclose(boxes[i, :k], want, atol=1e-3)
            np.testing.assert_allclose(scores[i, :k], [d.score for d in reply.detections], atol=1e-5)
