"""Plant, one at a time, each defect a promise of docs/guarantees.md guards against, in a copy
of this checkout, and check that the promise's test then fails:

    .venv/bin/python tests/planted_defects.py

Exits 1 naming any defect its test misses. Not part of `make test` (it reruns tests per defect)."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1]
DEFECTS = [
    (
        "resume loses the shuffle state",
        "src/augdefense/training.py",
        '        self.shuffle.set_state(saved["rng_shuffle"])\n',
        "        pass\n",
        "tests/test_faults.py::test_killed_training_resumes_to_identical_metrics",
    ),
    (
        "another run's checkpoint is resumed",
        "src/augdefense/training.py",
        'if state["fingerprint"] != self.fingerprint:',
        "if False:",
        "tests/test_faults.py::test_checkpoint_of_another_run_is_ignored",
    ),
    (
        "writes go straight to the target",
        "src/augdefense/io.py",
        '    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)\n'
        "    os.close(fd)\n    tmp_path = Path(tmp)\n",
        "    tmp_path = path\n",
        "tests/test_faults.py::test_a_failed_write_leaves_the_old_file_and_no_temporary",
    ),
    (
        "a timing in the poison artifact",
        "src/augdefense/jobs/craft.py",
        '            log.info("crafting took %.1f s", timing.recorded()["craft"])\n',
        '            poison["info"]["craft_seconds"] = timing.recorded()["craft"]\n',
        "tests/test_faults.py::test_same_seed_gives_byte_identical_poison",
    ),
    (
        "inputs not checked against their producer",
        "src/augdefense/execution.py",
        "        if recorded != digests[file]:",
        "        if False:",
        "tests/test_workflow.py::test_a_corrupted_input_is_refused_naming_it",
    ),
    (
        "a NaN loss is not caught",
        "src/augdefense/training.py",
        "        if bad:\n            step = self.checked + bad[0]\n",
        "        if False:\n            step = self.checked + bad[0]\n",
        "tests/test_training.py::test_divergence_stops_with_epoch_step_and_defense",
    ),
    (
        "a range check dropped",
        "src/augdefense/defenses/mixing.py",
        '"k": Param("integer", "mixture width (images mixed into one)", default=2, minimum=1)',
        '"k": Param("integer", "mixture width (images mixed into one)", default=2)',
        "tests/test_mixing.py::test_bad_defense_entries_name_the_key "
        "tests/test_declarations.py::test_committed_schema_is_the_generated_one",
    ),
    (
        "GPU slots not locked",
        "src/augdefense/gpu.py",
        "                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
        "                pass\n",
        "tests/test_gpu.py::test_concurrent_jobs_get_distinct_devices",
    ),
    (
        "MaxUp's m releases not counted",
        "src/augdefense/defenses/mixing.py",
        'draws = self.m if self.mode == "worst" else 1',
        "draws = 1",
        "tests/test_dpsgd.py::test_theorem2_epsilon_for_every_defense_type",
    ),
    (
        "cutout gets a Theorem 2 epsilon",
        "src/augdefense/defenses/base.py",
        "return 1 if type(self).mix is Defense.mix and type(self).loss is Defense.loss else None",
        "return 1",
        "tests/test_dpsgd.py::test_theorem2_epsilon_for_every_defense_type",
    ),
    (
        "a corrupt artifact loads silently",
        "src/augdefense/io.py",
        '        raise ArtifactError(f"{path}: truncated or corrupted ({type(exc).__name__}: {exc})") from None',
        "        return {}",
        "tests/test_data.py::test_truncated_artifact_names_the_file",
    ),
    (
        "an impossible budget passes the dry run",
        "src/augdefense/config.py",
        "        if n > smallest:",
        "        if False:",
        "tests/test_workflow.py::test_an_impossible_budget_is_refused_at_dry_run",
    ),
    (
        "streamed poisons not shown at their indices",
        "src/augdefense/imagefiles.py",
        "        image = self.replaced.get(position)\n",
        "        image = None\n",
        "tests/test_stream.py::test_a_seed_gives_the_same_poisons_and_metrics_through_either_storage",
    ),
    (
        "the streamed loader draws from the global generator",
        "src/augdefense/imagefiles.py",
        "        generator=torch.Generator().manual_seed(0),\n",
        "",
        "tests/test_stream.py::test_a_seed_gives_the_same_poisons_and_metrics_through_either_storage",
    ),
    (
        "a set too large for memory passes the dry run",
        "src/augdefense/config.py",
        '    sources.check_fits(config["data"], facts)\n',
        "",
        "tests/test_stream.py::test_a_set_that_would_not_fit_in_memory_is_refused_at_dry_run",
    ),
    (
        "a forked job keeps the worker's directory",
        "src/augdefense/forkserver.py",
        '    os.chdir(request["cwd"])\n',
        "",
        "tests/test_forkserver.py::test_a_forked_job_writes_the_bytes_of_a_job_in_its_own_process",
    ),
    (
        "a killed script leaves its job running",
        "src/augdefense/forkserver.py",
        "        conn.close()\n        _kill_group(pid)\n",
        "        conn.close()\n",
        "tests/test_forkserver.py::test_killing_the_script_kills_its_job",
    ),
    (
        "a stale worker runs edited code",
        "src/augdefense/forkserver.py",
        "    if sources_fingerprint() != fingerprint:",
        "    if False:",
        "tests/test_forkserver.py::test_a_job_the_worker_cannot_run_runs_in_its_own_process",
    ),
    (
        "the checkpoint's fingerprint leaves out the poison",
        "src/augdefense/jobs/train.py",
        '                "poison": sha256(job.poison) if job.poison else None,\n',
        '                "poison": None,\n',
        "tests/test_faults.py::test_checkpoint_of_a_run_on_other_inputs_or_config_is_ignored "
        "tests/test_faults.py::test_the_fingerprint_covers_every_input_config_entry_and_the_seed",
    ),
    (
        "the checkpoint's fingerprint leaves out the defense",
        "src/augdefense/jobs/train.py",
        '                "defense": job.defense,\n',
        "",
        "tests/test_faults.py::test_checkpoint_of_a_run_on_other_inputs_or_config_is_ignored "
        "tests/test_faults.py::test_the_fingerprint_covers_every_input_config_entry_and_the_seed",
    ),
    (
        "an input no job recorded is not named unverified",
        "src/augdefense/execution.py",
        "                unverified.append(file)\n",
        "                pass\n",
        "tests/test_faults.py::test_an_input_no_job_recorded_is_named_unverified_and_a_changed_one_refused",
    ),
    (
        "McNemar's exact p off by one discordant pair",
        "src/augdefense/metrics.py",
        "stats.binom.cdf(np.minimum(b, c), b + c, 0.5)",
        "stats.binom.cdf(np.minimum(b, c) - 1, b + c, 0.5)",
        "tests/test_claims.py::test_three_identical_discordant_seeds_are_inconclusive",
    ),
    (
        "a run changed since its manifest is packed as evidence",
        "src/augdefense/evidence.py",
        '    if problems:\n        raise ArtifactError(f"{run_dir}: outputs changed',
        '    if False:\n        raise ArtifactError(f"{run_dir}: outputs changed',
        "tests/test_provenance.py::test_packed_evidence_is_the_runs_files_with_where_they_came_from",
    ),
]
IGNORE = shutil.ignore_patterns(
    ".venv", "results", "resources", ".snakemake", "scratch", "logs", "benchmarks", "mutants", ".git"
)


def main() -> int:
    missed = []
    for name, file, old, new, tests in DEFECTS:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "tree"
            shutil.copytree(SRC, copy, ignore=IGNORE)
            target = copy / file
            text = target.read_text()
            if old not in text:
                raise SystemExit(f"{name}: the code to plant it in changed ({file}); update this script")
            target.write_text(text.replace(old, new, 1))
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests.split()],
                cwd=copy,
                capture_output=True,
                text=True,
            )
        caught = done.returncode != 0
        if not caught:
            missed.append(name)
        print(f"{'caught' if caught else 'MISSED'}: {name} ({tests})", flush=True)
    print("every planted defect was caught" if not missed else f"missed: {missed}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
