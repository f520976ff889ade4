// Helpers that run inside the test page (imported there from /tests/browser/page.mjs): staging
// a model's files into a Tastebud instance the way an app would fetch them.

// Stages the files of a diffusers snapshot at URL `model` and loads it as the pipeline.
export async function loadPipeline(tb, Tastebud, model) {
  const index = new Uint8Array(await (await fetch(`${model}/model_index.json`)).arrayBuffer());
  tb.add_file('model_index.json', index);
  for (const group of JSON.parse(Tastebud.pipeline_files(index))) {
    await stageFirst(tb, group.map((name) => [name, `${model}/${name}`]));
  }
  tb.load_staged(model);
}

// Stages the first of `candidates` ([name, url] pairs) that exists; false when none does.
export async function stageFirst(tb, candidates) {
  for (const [name, url] of candidates) {
    const r = await fetch(url);
    if (r.ok) {
      tb.add_file(name, new Uint8Array(await r.arrayBuffer()));
      return true;
    }
  }
  return false;
}
