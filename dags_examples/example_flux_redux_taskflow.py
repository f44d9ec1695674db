"""Example (c): TaskFlow. List the day's photos, vary each with ``@task.flux_redux`` at a size that follows
its orientation, then read the saved variations back into one contact sheet.

The photo folder and the output folder come from the environment, as in the other examples.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.providers.common.compat.sdk import dag, task

PHOTOS = os.environ.get("FLUX_REDUX_TASKFLOW_PHOTOS", "/tmp/flux-redux-photos")
OUTPUT_DIR = os.environ.get("FLUX_REDUX_EXAMPLE_OUTPUT", "/tmp/flux-redux-output")
THUMBNAIL = 128


@dag(
    dag_id="example_flux_redux_taskflow",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["example", "flux-redux"],
)
def example_flux_redux_taskflow() -> None:
    @task
    def list_photos() -> list[str]:
        """The photos waiting in the folder (a real DAG might list a bucket: return s3:// URIs, they work too)."""
        kinds = {".png", ".jpg", ".jpeg", ".webp"}
        return sorted(str(path) for path in Path(PHOTOS).glob("*") if path.suffix.lower() in kinds)

    # [START howto_decorator_flux_redux]
    @task.flux_redux(
        output_path=f"file://{OUTPUT_DIR}/taskflow/{{{{ run_id | replace(':', '_') | replace('+', '_') }}}}",
        output_name="{input_stem}_{index}",
        poll_interval=0.5,
    )
    def vary(photo: str) -> dict:
        """Runs in the worker: the request for one photo, sized by its orientation."""
        from PIL import Image

        with Image.open(photo) as image:
            width, height = image.size
        size = "landscape_4_3" if width > height else "portrait_4_3" if height > width else "square"
        print(f"{Path(photo).name} is {width}x{height}: asking for {size}")
        return {"image_url": photo, "image_size": size, "seed": 42}

    # [END howto_decorator_flux_redux]

    @task
    def contact_sheet(results: list[dict]) -> dict:
        """Read every saved variation back (each mapped result is the operator's XCom dict) into one image."""
        from PIL import Image

        paths = [image["local_path"] for result in results for image in result["images"]]
        sheet = Image.new("RGB", (THUMBNAIL * max(len(paths), 1), THUMBNAIL), "white")
        for index, path in enumerate(paths):
            with Image.open(path) as picture:
                print(f"read {path}: {picture.size[0]}x{picture.size[1]}")
                picture.thumbnail((THUMBNAIL, THUMBNAIL))
                sheet.paste(picture, (index * THUMBNAIL, 0))
        target = os.path.join(os.path.dirname(paths[0]), "contact_sheet.png") if paths else None
        if target:
            sheet.save(target)
        return {"images": len(paths), "contact_sheet": target}

    contact_sheet(vary.expand(photo=list_photos()))


example_flux_redux_taskflow()
