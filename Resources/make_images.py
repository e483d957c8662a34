"""Draw the extension icons and render the module panels (the .ui files) into the screenshots.

    QT_QPA_PLATFORM=offscreen python Resources/make_images.py

Icons are drawn with Pillow. The panels are loaded from the modules' .ui files with PySide6 (offscreen), with
plain-Qt stand-ins for the few CTK/MRML widget classes that only exist inside Slicer, and filled with what the
module shows on a fresh start (the model list comes from the core's registry). They are renderings of the panels'
layout, not screenshots of Slicer: a caption on each image says so (``--screenshots`` renders only these).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ICON_SIZE = 128


# -- icons -------------------------------------------------------------------------------------------------------
def _tooth(draw, box, fill, outline, width):
    """A molar: crown with two cusps and two roots, inside box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    crown_bottom = y0 + 0.52 * h
    points = []
    for i in range(21):  # crown top: two cusps
        t = i / 20
        x = x0 + 0.08 * w + t * 0.84 * w
        y = y0 + 0.10 * h - 0.08 * h * abs(math.sin(2 * math.pi * t))
        points.append((x, y))
    points += [(x0 + 0.95 * w, crown_bottom - 0.08 * h), (x0 + 0.82 * w, crown_bottom),
               (x0 + 0.78 * w, y1 - 0.02 * h), (x0 + 0.66 * w, y1), (x0 + 0.56 * w, crown_bottom + 0.10 * h),
               (x0 + 0.44 * w, crown_bottom + 0.10 * h), (x0 + 0.34 * w, y1), (x0 + 0.22 * w, y1 - 0.02 * h),
               (x0 + 0.18 * w, crown_bottom), (x0 + 0.05 * w, crown_bottom - 0.08 * h)]
    draw.polygon(points, fill=fill, outline=outline, width=width)


def make_icon(path: Path, accent=(46, 134, 222), badge: str = "") -> None:
    from PIL import Image, ImageDraw, ImageFont

    scale = 4  # draw large, then downsample: smooth edges
    size = ICON_SIZE * scale
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((4 * scale, 4 * scale, size - 4 * scale, size - 4 * scale), radius=22 * scale,
                           fill=accent + (255,))
    # Feature-prompt grid behind the tooth: the dense prompt.
    for i in range(6):
        for j in range(6):
            cx, cy = (22 + i * 17) * scale, (22 + j * 17) * scale
            draw.ellipse((cx - 2 * scale, cy - 2 * scale, cx + 2 * scale, cy + 2 * scale),
                         fill=(255, 255, 255, 90))
    _tooth(draw, (30 * scale, 24 * scale, 98 * scale, 108 * scale), (250, 244, 214, 255), (40, 40, 40, 255),
           3 * scale)
    # Detection box around the tooth: the localization branch.
    draw.rectangle((24 * scale, 16 * scale, 104 * scale, 112 * scale), outline=(255, 210, 60, 255), width=3 * scale)
    if badge:
        draw.ellipse((84 * scale, 84 * scale, 124 * scale, 124 * scale), fill=(30, 30, 30, 255))
        try:
            font = ImageFont.load_default(size=28 * scale)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        draw.text((104 * scale, 104 * scale), badge, fill=(255, 255, 255, 255), font=font, anchor="mm")
    img = img.resize((ICON_SIZE, ICON_SIZE), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# -- panels ------------------------------------------------------------------------------------------------------
_STAND_INS = []  # made once and kept: PySide6 keeps registered custom widget classes for every later QUiLoader,
# so a class that died with its function makes any later .ui load in the process crash


def _stand_ins():
    """Plain-Qt classes named like the Slicer widgets used in the .ui files."""
    if not _STAND_INS:
        _STAND_INS.extend(_make_stand_ins())
    return list(_STAND_INS)


def _make_stand_ins():
    from PySide6.QtCore import Property
    from PySide6.QtWidgets import QComboBox, QGroupBox, QLineEdit, QWidget

    class qMRMLWidget(QWidget):  # noqa: N801 - named as the Slicer class it stands for
        pass

    class ctkCollapsibleButton(QGroupBox):  # noqa: N801
        def _get_text(self):
            return self.title()

        def _set_text(self, value):
            self.setTitle(value)

        def _get_collapsed(self):
            return bool(getattr(self, "_collapsed", False))

        def _set_collapsed(self, value):
            self._collapsed = bool(value)
            self.setMaximumHeight(22 if value else 16777215)

        text = Property(str, _get_text, _set_text)
        collapsed = Property(bool, _get_collapsed, _set_collapsed)

    class qMRMLNodeComboBox(QComboBox):  # noqa: N801
        pass

    class ctkPathLineEdit(QLineEdit):  # noqa: N801
        pass

    return [qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit]


def load_panel(ui_path: Path):
    """Load a module .ui file with the stand-ins; returns the top widget."""
    from PySide6.QtUiTools import QUiLoader

    loader = QUiLoader()
    for cls in _stand_ins():
        loader.registerCustomWidget(cls)
    widget = loader.load(str(ui_path))
    if widget is None:
        raise RuntimeError(f"{ui_path}: {loader.errorString()}")
    return widget


def _child(widget, name):
    from PySide6.QtWidgets import QWidget

    found = widget.findChild(QWidget, name)
    if found is None:
        raise KeyError(f"no widget named {name}")
    return found


def render_segment(path: Path) -> None:
    sys.path.insert(0, str(REPO / "LDFSAMSegment"))
    sys.path.insert(0, str(REPO))
    from LDFSAMSegmentLib.model_choices import model_choices

    panel = load_panel(REPO / "LDFSAMSegment" / "Resources" / "UI" / "LDFSAMSegment.ui")
    _child(panel, "inputVolumeSelector").addItem("CBCT")
    _child(panel, "outputSegmentationSelector").addItem("(create new segmentation)")
    models = _child(panel, "modelComboBox")
    choices = model_choices()
    for choice in choices:
        models.addItem(choice.label)
    _child(panel, "modelDescriptionLabel").setText(choices[0].description if choices else "No model installed.")
    _child(panel, "downloadModelButton").setEnabled(bool(choices) and choices[0].state == "available")
    _child(panel, "deviceComboBox").addItems(["auto", "CPU", "GPU"])
    _child(panel, "thresholdSpinBox").setValue(0.5)
    _child(panel, "minIslandSpinBox").setValue(10.0)
    _child(panel, "sliceSpacingComboBox").addItems(["auto", "2px", "native"])
    _child(panel, "segmentButton").setEnabled(True)
    _grab(panel, path, 440, 650)


def render_train(path: Path) -> None:
    panel = load_panel(REPO / "LDFSAMTrain" / "Resources" / "UI" / "LDFSAMTrain.ui")
    for name, items, current in (("teacherScaleComboBox", "nsmlx", "x"), ("studentScaleComboBox", "nsmlx", "n"),
                                 ("samPresetComboBox", ["vit_b", "vit_l", "vit_h", "small"], "vit_b"),
                                 ("deviceComboBox", ["auto", "CPU", "GPU"], "auto")):
        box = _child(panel, name)
        box.addItems(list(items))
        box.setCurrentText(current)
    for name, value in (("budgetSpinBox", 100), ("distillEpochsSpinBox", 100), ("finetuneEpochsSpinBox", 200),
                        ("batchSizeSpinBox", 16)):
        _child(panel, name).setValue(value)
    _grab(panel, path, 460, 980)


CAPTION = "{ui} rendered offscreen with PySide6 (plain-Qt stand-ins for CTK/MRML widgets), not a Slicer screenshot"


def _grab(panel, path: Path, width: int, height: int) -> None:
    """Render the panel with a caption band on top that says what the image is: the panel's layout from its .ui,
    drawn by PySide6 without Slicer (Slicer's own widgets, style and views look different)."""
    from PySide6.QtCore import QRect, Qt
    from PySide6.QtGui import QColor, QPainter, QPixmap
    from PySide6.QtWidgets import QApplication

    panel.resize(width, height)
    panel.show()
    QApplication.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    shot = panel.grab()
    band = 34
    image = QPixmap(shot.width(), shot.height() + band)
    image.fill(QColor(255, 243, 205))
    painter = QPainter(image)
    painter.drawPixmap(0, band, shot)
    painter.setPen(QColor(90, 70, 0))
    font = painter.font()
    font.setPointSize(8)
    painter.setFont(font)
    painter.drawText(QRect(6, 2, shot.width() - 12, band - 4), int(Qt.AlignVCenter | Qt.TextWordWrap),
                     CAPTION.format(ui=path.stem + ".ui"))
    painter.end()
    if not image.save(str(path)):
        raise RuntimeError(f"{path}: could not save the screenshot")


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])  # noqa: F841 - needed for widgets
    if "--screenshots" in sys.argv[1:]:
        render_segment(REPO / "Resources" / "Screenshots" / "LDFSAMSegment.png")
        render_train(REPO / "Resources" / "Screenshots" / "LDFSAMTrain.png")
        return 0
    make_icon(REPO / "Resources" / "Icons" / "LDFSAM.png")
    make_icon(REPO / "LDFSAMSegment" / "Resources" / "Icons" / "LDFSAMSegment.png", accent=(46, 134, 222))
    make_icon(REPO / "LDFSAMTrain" / "Resources" / "Icons" / "LDFSAMTrain.png", accent=(39, 174, 96), badge="T")
    render_segment(REPO / "Resources" / "Screenshots" / "LDFSAMSegment.png")
    render_train(REPO / "Resources" / "Screenshots" / "LDFSAMTrain.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
