//! `mnist serve` in a real headless Chromium, driven over WebDriver (chromedriver) as a person
//! would use the page: draw a "1" and a "0" with pointer strokes, and read what the page shows.
//! The screenshots are kept in `target/browser/`.
//!
//! Needs `chromium` and `chromedriver` (Debian's `chromium` and `chromium-driver`) and the real
//! MNIST, to train a model that reads drawn digits. Without them it is skipped, except when
//! `CI=true`, where it fails.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Serving, arg, run, text};

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A WebDriver session.
struct Browser {
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl Browser {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let value: Value = response.body_mut().read_json().unwrap();
        assert!(value["value"].get("error").is_none(), "{method} {path}: {value}");
        value["value"].clone()
    }

    fn element(&self, css: &str) -> String {
        let found = self.call("POST", "/element", Some(json!({ "using": "css selector", "value": css })));
        found.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_owned()
    }

    fn text(&self, css: &str) -> String {
        let id = self.element(css);
        self.call("GET", &format!("/element/{id}/text"), None).as_str().unwrap().to_owned()
    }

    fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Draws a stroke through `points` (in the canvas's own pixels) with a pen.
    fn draw(&self, points: &[(f64, f64)]) {
        let rect = self.script(
            "const r = document.getElementById('pad').getBoundingClientRect(); return [r.left, r.top, r.width / 280];",
        );
        let (left, top, scale) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap(), rect[2].as_f64().unwrap());
        let at = |&(x, y): &(f64, f64)| json!({ "type": "pointerMove", "duration": 10, "origin": "viewport", "x": (left + x * scale).round() as i64, "y": (top + y * scale).round() as i64 });
        let mut actions = vec![at(&points[0]), json!({ "type": "pointerDown", "button": 0 })];
        actions.extend(points[1..].iter().map(at));
        actions.push(json!({ "type": "pointerUp", "button": 0 }));
        let pointer =
            json!({ "type": "pointer", "id": "pen", "parameters": { "pointerType": "pen" }, "actions": actions });
        self.call("POST", "/actions", Some(json!({ "actions": [pointer] })));
    }

    /// The class the page shows once it has answered, and its ten probabilities.
    fn reading(&self) -> (String, Vec<f64>) {
        let started = Instant::now();
        loop {
            // The answer to the finished drawing: no request in flight or waiting to be sent (a
            // loaded machine answers the last strokes late). Checked before reading the page:
            // once idle, nothing is left to change it.
            let idle = self.script("return !pending && !again;") == json!(true);
            let probabilities: Vec<f64> = self
                .script("return [...document.querySelectorAll('#bars li')].map(li => Number(li.dataset.probability));")
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let digit = self.text("#digit");
            if digit != "?" && probabilities.len() == 10 && idle {
                return (digit, probabilities);
            }
            assert!(started.elapsed() < Duration::from_secs(15), "the page showed no prediction");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn browser_available() -> bool {
    let found = ["chromium", "chromedriver"]
        .iter()
        .all(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    if !found {
        assert!(
            !testkit::on_ci(),
            "CI=true but chromium or chromedriver cannot start (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipping the browser test: chromium or chromedriver is missing");
    }
    found
}

#[test]
fn a_person_draws_a_one_and_a_zero_and_the_page_reads_them() {
    let Some(data_dir) = testkit::mnist_dir() else { return };
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let out = run(&[
        "train",
        "--model",
        "lenet",
        "--epochs",
        "2",
        "--data-dir",
        arg(&data_dir),
        "--save",
        arg(&model),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let server = Serving::start(&model);
    let url = server.url.clone();

    let port = free_port();
    let _driver = Killed(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
    let started = Instant::now();
    while agent.get(format!("{base}/status")).call().is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let capabilities = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=820,900"]
    }}}});
    let mut response = agent.post(format!("{base}/session")).send_json(capabilities).expect("the browser starts");
    let created: Value = response.body_mut().read_json().unwrap();
    let session = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    let browser = Browser { base, session, agent };

    browser.call("POST", "/url", Some(json!({ "url": url })));
    assert_eq!(browser.call("GET", "/title", None), "Draw a digit");
    let shots = testkit::repo_root().join("target").join("browser");

    // A "1": one vertical stroke.
    let one: Vec<(f64, f64)> = (0..=20).map(|i| (140.0, 50.0 + 9.0 * f64::from(i))).collect();
    browser.draw(&one);
    let (digit, probabilities) = browser.reading();
    browser.screenshot(&shots.join("one.png"));
    assert_eq!(digit, "1", "{probabilities:?}");
    let sum: f64 = probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-3, "the probabilities sum to {sum}");
    assert!(browser.text("#facts").contains("parameters"), "the model's facts are shown");
    // The bars are drawn as wide as their probabilities: each fill's width over its track's.
    let drawn: Vec<f64> = browser
        .script(
            "return [...document.querySelectorAll('#bars li')].map(li => \
             li.querySelector('.fill').getBoundingClientRect().width / li.querySelector('.track').getBoundingClientRect().width);",
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(drawn.len(), 10);
    for (c, (&width, &p)) in drawn.iter().zip(&probabilities).enumerate() {
        assert!((width - p).abs() <= 0.02, "class {c}: a bar {width:.3} of its track for {p:.3}");
    }

    // Cleared while a prediction is in flight: its answer must not repaint the page.
    let clear = browser.element("#clear");
    browser.draw(&one[..4]);
    browser.call("POST", &format!("/element/{clear}/click"), None);
    std::thread::sleep(Duration::from_millis(1000));
    let state =
        browser.script("return [document.getElementById('digit').textContent, drawingId, pending, again, dirty];");
    assert_eq!(browser.text("#digit"), "?", "an answer for the cleared drawing was shown: {state}");
    let bars = browser.script("return document.querySelectorAll('#bars li').length;");
    assert_eq!(bars, 0, "bars for the cleared drawing were shown");

    // Then a "0": an ellipse.
    let zero: Vec<(f64, f64)> = (0..=40)
        .map(|i| {
            let t = f64::from(i) / 40.0 * std::f64::consts::TAU;
            (140.0 + 55.0 * t.sin(), 140.0 - 85.0 * t.cos())
        })
        .collect();
    browser.draw(&zero);
    let (digit, probabilities) = browser.reading();
    browser.screenshot(&shots.join("zero.png"));
    assert_eq!(digit, "0", "{probabilities:?}");

    // The same model with its classes named (as a Fashion-MNIST model's are): the page shows
    // the names, on the answer and on every bar, and the bars still line up.
    let names = data::known_set("fashion-mnist").unwrap().class_names;
    let mut state = nn::StateDict::from_safetensors(&std::fs::read(&model).unwrap()).unwrap();
    train::record_class_names(&mut state, &names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>());
    let named = dir.path().join("named.safetensors");
    std::fs::write(&named, state.to_safetensors()).unwrap();
    let server = Serving::start(&named);
    browser.call("POST", "/url", Some(json!({ "url": server.url })));
    std::thread::sleep(Duration::from_millis(500));
    browser.draw(&zero);
    let (answer, _) = browser.reading();
    browser.screenshot(&shots.join("named.png"));
    assert_eq!(answer, names[0]);
    let labels =
        browser.script("return [...document.querySelectorAll('#bars li > span:first-child')].map(s => s.textContent);");
    assert_eq!(labels, json!(names));
    let lefts = browser.script(
        "return [...document.querySelectorAll('#bars li .track')].map(t => Math.round(t.getBoundingClientRect().left));",
    );
    let lefts = lefts.as_array().unwrap();
    assert!(lefts.windows(2).all(|w| w[0] == w[1]), "the bars start at different places: {lefts:?}");
    browser.call("DELETE", "", None);
}
