"""A web app and a notebook widget: upload an MRI slice, see the predicted tumour.

    python -m helpers.app [--model PATH] [--port 7860] [--share]

Both are thin wrappers over ``helpers.inference.load_image`` and ``segment``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from helpers import inference, plots

DISCLAIMER = (
    "**For research and teaching, not diagnosis.** The model was trained on brain MRI slices "
    "of lower-grade glioma patients in one public dataset (LGG MRI Segmentation, TCGA) and has not been "
    "validated for clinical use. It expects a brain MRI slice like those; on any other image "
    "its answer means nothing. " + inference.CHANNELS_NOTE
)
NOT_INTERACTIVE = (
    "The upload widget needs a live notebook (Jupyter, Colab or VS Code). When the notebook "
    "runs headless, for instance under papermill, list your files in IMAGE_PATHS instead."
)


def build_app(model_path: str | os.PathLike | None = None, examples: list[str | os.PathLike] | None = None,
              max_upload_mb: float = 10, threshold: float | None = None,
              min_component_pixels: int | None = None) -> gr.Blocks:
    """Build the Gradio app (launch it with ``launch_app``).

    Args:
        model_path: a saved ``.keras`` model; ``None`` for
            ``helpers.inference.DEFAULT_MODEL``. Loaded now, so a missing
            model fails here, not at the first upload.
        examples: image files offered as examples; ``None`` for none. TIFFs
            are offered as PNG copies, since browsers do not show TIFF.
        max_upload_mb: larger uploads are refused with a message.
        threshold: the slider's starting threshold; ``None`` for the one
            recorded beside the model (``inference.recommended_settings``).
        min_component_pixels: smaller predicted regions (pixels of a 256x256
            slice, scaled by area, as in ``inference.segment``) are dropped;
            ``None`` for the value recorded beside the model.

    Returns:
        The app, not launched.

    Raises:
        FileNotFoundError: if there is no model at ``model_path``.
        ValueError: naming the file, if it is not a saved model or the
            settings beside it cannot be read.
    """
    settings = inference.recommended_settings(model_path)
    model = inference.load_default_model(model_path)
    if threshold is not None:
        settings["threshold"] = threshold
    if min_component_pixels is not None:
        settings["min_component_pixels"] = min_component_pixels
    max_bytes = upload_limit_bytes(max_upload_mb)

    def run(upload: dict | str | None, threshold: float) -> tuple[np.ndarray, np.ndarray, int, str]:
        # The listeners skip Gradio's preprocessing (which opens the upload with
        # Pillow, failing on some TIFFs and wording errors its own way), so the
        # upload arrives as Gradio's file record; load_image reads the file.
        image_path = upload.get("path") if isinstance(upload, dict) else upload
        if not image_path:
            raise gr.Error("Upload an image first (PNG, JPEG or TIFF).")
        name = (upload.get("orig_name") if isinstance(upload, dict) else None) or Path(image_path).name
        size = os.path.getsize(image_path)
        if size > max_bytes:
            raise gr.Error(f"{name} is {size / 2**20:.1f} MB, more than the "
                           f"{max_upload_mb:g} MB limit. Downscale or compress it first.")
        try:
            image = inference.load_image(image_path, name=name)
        except inference.ImageLoadError as error:
            raise gr.Error(str(error)) from error
        result = inference.segment(model, image, threshold, settings["min_component_pixels"])
        height, width = result.mask.shape
        share = result.tumour_pixels / result.mask.size
        summary = (f"{result.tumour_pixels:,} of {height * width:,} pixels ({share:.1%}) predicted as "
                   f"tumour at threshold {threshold:.2f}; highest probability "
                   f"{result.max_probability:.2f}. Image {width}x{height}, read as {result.read_as}.")
        return result.mask * np.uint8(255), result.overlay, result.tumour_pixels, summary

    # No analytics: the app sends nothing anywhere that the user did not ask for.
    with gr.Blocks(title="LGG tumour segmentation", analytics_enabled=False) as app:
        gr.Markdown("# Segment a brain MRI slice\nUpload a slice (PNG, JPEG or TIFF, "
                    f"at most {max_upload_mb:g} MB); the ResUNet outlines the tumour it predicts.")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="MRI slice", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"], height=320, elem_id="input-image")
                threshold = gr.Slider(0.05, 0.95, value=settings["threshold"], step=0.05, label="Threshold",
                                      info="a pixel is tumour when its probability is above this")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
            with gr.Column():
                mask = gr.Image(label="Predicted mask", format="png", interactive=False, height=320, elem_id="mask")
                overlay = gr.Image(label="Overlay (tumour outlined in yellow)", format="png",
                                   interactive=False, height=320, elem_id="overlay")
                area = gr.Number(label="Tumour area (pixels)", precision=0, interactive=False, elem_id="area")
                summary = gr.Textbox(label="Summary", interactive=False, elem_id="summary")
        outputs = [mask, overlay, area, summary]
        if examples:
            gr.Examples(examples=[[str(p)] for p in _browser_viewable(examples)], inputs=[image],
                        label="Examples")
        # Gradio still checks that the file is one of its uploads; only the Pillow step is skipped.
        button.click(run, inputs=[image, threshold], outputs=outputs, api_name="segment", preprocess=False)
        # Segment on upload too, so one action gives the answer; the API has one endpoint.
        image.upload(run, inputs=[image, threshold], outputs=outputs, api_visibility="private",
                     preprocess=False)
    return app


def upload_limit_bytes(max_upload_mb: float) -> int:
    """The upload limit in bytes, 1 MB = 1024 x 1024 bytes as Gradio counts; fractions allowed (``--max-upload-mb 2.5``)."""
    return int(max_upload_mb * 1024 * 1024)


def _browser_viewable(paths: list[str | os.PathLike]) -> list[Path]:
    """The example images, TIFFs copied as PNG into a temporary folder (browsers do not show TIFF)."""
    viewable, folder = [], None
    for path in map(Path, paths):
        if path.suffix.lower() in (".tif", ".tiff"):
            folder = folder or Path(tempfile.mkdtemp(prefix="lgg_app_examples_"))
            copy = folder / f"{path.stem}.png"
            Image.fromarray(inference.load_image(path)).save(copy)
            path = copy
        viewable.append(path)
    return viewable


def launch_app(app: gr.Blocks, port: int | None = None, share: bool = False, max_upload_mb: float = 10,
               server_name: str = "127.0.0.1", prevent_thread_lock: bool = False, **launch_options):
    """Launch the app with the upload limit also enforced by the server.

    Args:
        app: from ``build_app``.
        port: the port; ``None`` for Gradio's default (7860, or the next free one).
        share: also serve through a temporary public Gradio link.
        max_upload_mb: the server refuses larger uploads.
        server_name: the address to listen on; 127.0.0.1 keeps it on this machine.
        prevent_thread_lock: return at once instead of serving until interrupted.
        **launch_options: passed to ``gradio.Blocks.launch``.

    Returns:
        What ``gradio.Blocks.launch`` returns: (FastAPI app, local URL, share URL).
    """
    return app.launch(server_name=server_name, server_port=port, share=share,
                      max_file_size=upload_limit_bytes(max_upload_mb), prevent_thread_lock=prevent_thread_lock,
                      show_error=True, **launch_options)


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """Name and bytes of each file in a ``FileUpload`` widget's value, in either ipywidgets format.

    ipywidgets 8 gives a tuple of dicts with ``name`` and ``content``;
    ipywidgets 7 (still found in some Colab images) a dict from file name
    to a dict with ``content``.
    """
    if isinstance(value, dict):
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


def upload_widget(model_path: str | os.PathLike | None = None, threshold: float | None = None,
                  min_component_pixels: int | None = None):
    """A notebook widget: upload images, see image, mask and overlay.

    Where widgets cannot show (a headless run, a static viewer) the cell
    shows a plain message instead.

    Args:
        model_path: a saved ``.keras`` model; ``None`` for the shipped one.
        threshold: probability threshold, 0-1; ``None`` for the value
            recorded beside the model (``inference.recommended_settings``).
        min_component_pixels: smallest predicted region kept (pixels of a
            256x256 slice, as in ``inference.segment``); ``None`` for
            the recorded value.

    Returns:
        An ipywidgets box to display.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    model = inference.load_default_model(model_path)
    settings = inference.recommended_settings(model_path)
    threshold = settings["threshold"] if threshold is None else threshold
    min_component_pixels = settings["min_component_pixels"] if min_component_pixels is None else min_component_pixels
    plots.enable_colab_widgets()

    class UploadPanel(widgets.VBox):
        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs) or {}
            bundle["text/plain"] = NOT_INTERACTIVE
            return bundle

    upload = widgets.FileUpload(accept=",".join(inference.IMAGE_SUFFIXES), multiple=True,
                                description="Upload slices")
    output = widgets.Output()

    def on_upload(change) -> None:
        with output:
            output.clear_output()
            for name, content in uploaded_files(change["new"]):
                try:
                    image = inference.load_image(content, name=name)
                except inference.ImageLoadError as error:
                    print(error)
                    continue
                result = inference.segment(model, image, threshold, min_component_pixels)
                figure = inference.segmentation_figure([image], [result], [name])
                display(figure)
                plt.close(figure)

    upload.observe(on_upload, names="value")
    return UploadPanel([upload, output])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--help`` shows every default."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.app",
        description="Serve a web page to segment brain MRI slices. For research and teaching, not diagnosis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=inference.DEFAULT_MODEL, help="saved .keras model")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public Gradio link")
    parser.add_argument("--max-upload-mb", type=float, default=10, help="largest upload accepted, in MB")
    parser.add_argument("--examples", nargs="*", type=Path, default=[], metavar="IMAGE",
                        help="image files offered as examples")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``--model --port --share`` and serve the app until interrupted."""
    args = build_parser().parse_args(argv)
    try:
        app = build_app(args.model, examples=args.examples or None, max_upload_mb=args.max_upload_mb)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        launch_app(app, port=args.port, share=args.share, max_upload_mb=args.max_upload_mb)
    except OSError as error:  # the port is taken, most often
        print(f"error: the app could not start on port {args.port} ({error}). Give another with --port.",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
