"""Tests of the Gradio app: launched on 127.0.0.1 and driven through gradio_client."""

from __future__ import annotations

import gradio_client
import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers import app as web_app


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_path):
    folder = tmp_path_factory.mktemp("app")
    model_path = tiny_model_path
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(folder / "slice.png")
    (folder / "notes.png").write_text("not an image")
    # A 16-bit TIFF, which Gradio's own image reading would mangle or refuse.
    tifffile.imwrite(folder / "deep.tif", rng.integers(0, 65535, (30, 20), dtype=np.uint16))
    # Random pixels do not compress: about 3 MB, over the 1.5 MB limit below.
    Image.fromarray(rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)).save(folder / "large.png")
    return {"model": model_path, "slice": folder / "slice.png", "notes": folder / "notes.png", "deep": folder / "deep.tif",
            "large": folder / "large.png"}


@pytest.fixture(scope="module")
def client(files, free_port):
    # A fractional limit, as `--max-upload-mb 1.5` gives: the server takes it in bytes.
    demo = web_app.build_app(files["model"], examples=[files["slice"]], max_upload_mb=1.5)
    _, url, _ = web_app.launch_app(demo, port=free_port(), max_upload_mb=1.5, prevent_thread_lock=True, quiet=True)
    try:
        yield gradio_client.Client(url, verbose=False)
    finally:
        demo.close()


def test_upload_returns_a_mask_at_the_image_size(client, files):
    mask_file, overlay_file, area, summary = client.predict(
        gradio_client.handle_file(str(files["slice"])), 0.5, api_name="/segment"
    )
    mask = np.asarray(Image.open(mask_file))
    assert mask.shape[:2] == (24, 40)
    assert set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(overlay_file)).shape[:2] == (24, 40)
    assert area == int((mask.reshape(24, 40, -1)[..., 0] > 0).sum())
    assert "pixels" in summary and "read as three sequences" in summary


def test_a_16_bit_tiff_is_segmented_at_its_size(client, files):
    mask_file, _, _, summary = client.predict(gradio_client.handle_file(str(files["deep"])), 0.5, api_name="/segment")
    assert np.asarray(Image.open(mask_file)).shape[:2] == (30, 20)
    assert "20x30" in summary and "read as FLAIR alone" in summary  # one channel: FLAIR alone


def test_a_higher_threshold_never_grows_the_area(client, files):
    areas = [client.predict(gradio_client.handle_file(str(files["slice"])), threshold, api_name="/segment")[2]
             for threshold in (0.05, 0.95)]
    assert areas[1] <= areas[0] <= 24 * 40


def test_a_file_that_is_not_an_image_is_refused(client, files):
    # The message is load_image's: it names the file and says what to do.
    with pytest.raises(Exception, match="notes.png: not an image.*Export the slice"):
        client.predict(gradio_client.handle_file(str(files["notes"])), 0.5, api_name="/segment")


def test_an_upload_over_the_size_limit_is_refused(client, files):
    assert files["large"].stat().st_size > 1.5 * 1024 * 1024
    # The server publishes its 1.5 MiB limit; the client reads it and refuses before uploading.
    with pytest.raises(ValueError, match=r"large\.png exceeds the maximum file size of 1572864 bytes"):
        client.predict(gradio_client.handle_file(str(files["large"])), 0.5, api_name="/segment")


def test_the_handler_refuses_files_over_its_limit(files):
    # The server's limit stops uploads first; the handler checks again for
    # files that reach it some other way (an example, the Python API).
    demo = web_app.build_app(files["model"], max_upload_mb=0.001)
    handler = demo.fns[0].fn
    with pytest.raises(Exception, match="slice.png.*limit"):
        handler(str(files["slice"]), 0.5)


def test_a_missing_model_fails_when_the_app_is_built(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.keras"):
        web_app.build_app(tmp_path / "none.keras")


def test_disclaimer_is_on_the_page(files):
    import gradio

    demo = web_app.build_app(files["model"])
    texts = [block.value for block in demo.blocks.values() if isinstance(block, gradio.Markdown)]
    assert any("not diagnosis" in text and "read as FLAIR alone" in text for text in texts)


def test_threshold_and_smallest_region_given_override_the_recorded_ones(files):
    import gradio

    # Counted on a 256x256 slice and scaled to this one's area: twice a whole slice drops every region.
    demo = web_app.build_app(files["model"], threshold=0.8, min_component_pixels=2 * 256 * 256)
    assert [block.value for block in demo.blocks.values() if isinstance(block, gradio.Slider)] == [0.8]
    _, _, area, _ = demo.fns[0].fn(str(files["slice"]), 0.05)
    assert area == 0
    kept = web_app.build_app(files["model"]).fns[0].fn(str(files["slice"]), 0.05)[2]
    assert kept > 0


def test_uploads_are_read_in_both_ipywidgets_formats(files):
    content = files["slice"].read_bytes()
    version_8 = ({"name": "slice.png", "type": "image/png", "size": len(content), "content": memoryview(content)},)
    version_7 = {"slice.png": {"metadata": {"name": "slice.png", "size": len(content)}, "content": content}}
    assert web_app.uploaded_files(version_8) == web_app.uploaded_files(version_7) == [("slice.png", content)]

