"""The LDFSAM Train module's parameters, saved with the scene (Slicer layer).

Paths are strings bound by the module (``LDFSAMPathParameter`` in the .ui): a ``pathlib.Path`` parameter reads an
empty value back as "." and the field would show ".".
"""

from typing import Annotated

from slicer import vtkMRMLPlotChartNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from .commands import SAM_PRESETS, SCALES, TEACHER_SCALES


@parameterNodeWrapper
class LDFSAMTrainParameterNode:
    datasetFolder: str = ""
    outputFolder: str = ""
    annotationBudget: Annotated[int, WithinRange(1, 100)] = 100
    teacherScale: Annotated[str, Choice(list(TEACHER_SCALES))] = "auto"
    studentScale: Annotated[str, Choice(list(SCALES))] = "n"
    samPreset: Annotated[str, Choice(list(SAM_PRESETS))] = "vit_b"
    samCheckpoint: str = ""
    distillEpochs: Annotated[int, WithinRange(1, 10000)] = 100
    finetuneEpochs: Annotated[int, WithinRange(1, 10000)] = 200
    batchSize: Annotated[int, WithinRange(1, 1024)] = 16
    device: Annotated[str, Choice(["auto", "CPU", "GPU"])] = "auto"
    stoppedStep: str = ""
    curveTable: vtkMRMLTableNode
    curveChart: vtkMRMLPlotChartNode
    evaluationTable: vtkMRMLTableNode
