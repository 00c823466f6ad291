from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.report import ReportOptions


@rsyn_command(
    app, "report", "Turn the --stats files of a run into one self-contained HTML report.", options=ReportOptions
)
def report(run: Run, opts: ReportOptions) -> None:
    """Turn the --stats JSON files of a run (INPUT...) into one self-contained HTML page to look at the data:
    a gallery of sampled pairs (thumbnail, texts with scores, caption, tags, syn_text and its cosine), the funnel
    from documents to pairs (images and sentences apart), histograms of the filter scores and the similarities
    with thresholds and the balance window marked, cluster sizes, packed text lengths, and the run's models,
    settings, version and date. Images are read only from a record's `path`, --images or --packed, never fetched.
    Write it with -o report.html."""
    from rsyn.stages.report import run_report

    run_report(run, opts)
