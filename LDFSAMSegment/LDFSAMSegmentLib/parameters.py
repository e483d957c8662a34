"""The LDFSAM Segment module's parameters (saved with the scene) and its application settings (Slicer layer)."""

from typing import Annotated, Optional, Union

import qt
from slicer import (
    vtkMRMLMarkupsCurveNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsLineNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from .cohort import SOURCES
from .training_set import REVIEW_CHOICES

SETTINGS_CACHE = "LDFSAM/CacheFolder"
SETTINGS_DEVICE = "LDFSAM/Device"
DEVICES = ("auto", "CPU", "GPU")


@parameterNodeWrapper
class LDFSAMSegmentParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = "ldfsam-demo"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    minIslandMm3: Annotated[float, WithinRange(0.0, 100000.0)] = 10.0
    splitTeeth: bool = False
    sliceSpacing: Annotated[str, Choice(["auto", "2px", "native"])] = "auto"
    # "Many volumes": where the volumes come from, the folder read when it is "Folder", where results go.
    cohortSource: Annotated[str, Choice(list(SOURCES))] = SOURCES[0]
    cohortFolder: str = ""
    cohortOutputFolder: str = ""
    # "Interactive": the ROI and point lists of the structure, and the segmentation its segments go to.
    interactiveRoi: vtkMRMLMarkupsROINode
    interactiveInclude: vtkMRMLMarkupsFiducialNode
    interactiveExclude: vtkMRMLMarkupsFiducialNode
    interactiveSegmentation: vtkMRMLSegmentationNode
    # A line of clicks through the structure's slices (SPD's centreline prompt), and the worker's --prior.
    interactiveLine: Union[vtkMRMLMarkupsCurveNode, vtkMRMLMarkupsLineNode, vtkMRMLMarkupsFiducialNode]
    interactivePrior: str = "auto"
    # "Training set": the user's training folder, what they reviewed, and the name of the improved model.
    trainingFolder: str = ""
    reviewed: Annotated[str, Choice(list(REVIEW_CHOICES))] = REVIEW_CHOICES[0]
    reviewedSlices: str = ""
    newModelName: str = ""
    improvedModel: str = ""  # the last model the section installed ("Use the new model" selects it)


def cacheFolder() -> Optional[str]:
    """The model cache folder chosen in the module (remembered in the application settings), or None."""
    return qt.QSettings().value(SETTINGS_CACHE, "") or None


def setCacheFolder(path: str) -> None:
    qt.QSettings().setValue(SETTINGS_CACHE, path)


def lastDevice() -> Optional[str]:
    device = qt.QSettings().value(SETTINGS_DEVICE, "")
    return device if device in DEVICES else None


def setLastDevice(device: str) -> None:
    if device in DEVICES:
        qt.QSettings().setValue(SETTINGS_DEVICE, device)
