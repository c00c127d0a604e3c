//! The server on loopback: every endpoint, every bad request, concurrent and stalled clients.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serve::{ErrorBody, Limits, ModelFacts, Prediction, Predictions};
use support::{agent, get, post, raw, start};

fn png_of_a_bar() -> Vec<u8> {
    let img = image::GrayImage::from_fn(60, 80, |x, y| {
        image::Luma([if (26..34).contains(&x) && (10..70).contains(&y) { 0 } else { 255 }])
    });
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

fn assert_prediction(p: &Prediction) {
    assert_eq!((p.probabilities.len(), p.input.len()), (10, 784));
    let sum: f32 = p.probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
    let best = p.probabilities.iter().copied().fold(f32::MIN, f32::max);
    assert_eq!(p.probabilities[p.class], best);
    assert!(p.input.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn the_page_its_files_health_and_model_facts_are_served() {
    let base = start(Limits::default());
    let (status, kind, html) = get(&base, "/");
    assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
    assert!(html.contains("<canvas id=\"pad\"") && html.contains("/app.js") && !html.contains("http"), "{html}");
    let (status, kind, js) = get(&base, "/app.js");
    assert!(status == 200 && kind.starts_with("text/javascript") && js.contains("/api/predict"));
    assert_eq!(get(&base, "/style.css").0, 200);
    for path in ["/", "/app.js", "/style.css"] {
        let response = agent().get(format!("{base}{path}")).call().unwrap();
        let header = |name: &str| response.headers().get(name).map_or("", |v| v.to_str().unwrap()).to_owned();
        let policy = header("content-security-policy");
        assert!(
            policy.contains("script-src 'self'")
                && policy.contains("frame-ancestors 'none'")
                && !policy.contains("unsafe"),
            "{path}: {policy}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
    }
    assert_eq!(get(&base, "/healthz"), (200, "application/json".into(), "{\"status\":\"ok\"}".into()));
    let facts: ModelFacts = serde_json::from_str(&get(&base, "/api/model").2).unwrap();
    assert_eq!((facts.parameters, facts.inputs, facts.classes, facts.test_accuracy), (7954, 784, 10, Some(0.5)));
    assert!(facts.architecture.starts_with("conv(4,5,pad=2)"), "{}", facts.architecture);
}

#[test]
fn images_and_pixels_are_predicted_alike() {
    let base = start(Limits::default());
    let (status, body) = post(&base, "image/png", &png_of_a_bar());
    assert_eq!(status, 200, "{body}");
    let from_png: Prediction = serde_json::from_str(&body).unwrap();
    assert_prediction(&from_png);

    // The preprocessed image sent back as pixels, in 0..1 and in 0..255, reads the same.
    let unit = serde_json::json!({ "pixels": from_png.input });
    let (status, body) = post(&base, "application/json", unit.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let from_unit: Prediction = serde_json::from_str(&body).unwrap();
    assert_eq!(from_unit.class, from_png.class);
    let bytes: Vec<f64> = from_png.input.iter().map(|&v| (f64::from(v) * 255.0).round()).collect();
    let (_, body) =
        post(&base, "application/json; charset=utf-8", serde_json::json!({ "pixels": bytes }).to_string().as_bytes());
    assert_eq!(serde_json::from_str::<Prediction>(&body).unwrap().class, from_png.class);

    let batch = serde_json::json!({ "images": [from_png.input, vec![0.0; 784], vec![1.0; 784]] });
    let (status, body) = post(&base, "application/json", batch.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let Predictions { predictions } = serde_json::from_str(&body).unwrap();
    assert_eq!(predictions.len(), 3);
    // Numbers as f32 prints them, as short as round-trips: no f64 digits beyond f32's nine.
    let longest = body.split(|c: char| !(c.is_ascii_digit() || c == '.')).map(str::len).max().unwrap_or(0);
    assert!(longest <= 11, "a number of {longest} characters in {body}");
    predictions.iter().for_each(assert_prediction);
    assert_eq!(predictions[0].class, from_png.class);
}

#[test]
fn bad_requests_get_a_json_error_and_the_right_status() {
    let limits = Limits { body_bytes: 64 << 10, images: 4, ..Limits::default() };
    let base = start(limits);
    let pixels = |n: usize| serde_json::json!({ "pixels": vec![0.5; n] }).to_string();
    for (content_type, body, status, needle) in [
        ("application/json", b"{\"pixels\": [1, 2".to_vec(), 400, "malformed JSON"),
        ("application/json", b"{\"pixles\": []}".to_vec(), 400, "malformed JSON"),
        ("application/json", pixels(783).into_bytes(), 400, "has 783 values"),
        ("application/json", b"{\"pixels\": [1e999]}".to_vec(), 400, "malformed JSON"),
        ("application/json", format!("{{\"pixels\": [{}-3]}}", "0,".repeat(783)).into_bytes(), 400, "holds -3"),
        ("application/json", format!("{{\"pixels\": [{}300]}}", "0,".repeat(783)).into_bytes(), 400, "holds 300"),
        ("application/json", b"{}".to_vec(), 400, "send either"),
        (
            "application/json",
            serde_json::json!({ "images": vec![vec![0.0; 784]; 5] }).to_string().into_bytes(),
            400,
            "holds 5 images",
        ),
        ("image/png", b"not a png".to_vec(), 400, "not a readable image"),
        ("image/png", vec![0u8; 70 << 10], 413, "larger than the 65536 bytes"),
        ("text/plain", b"7".to_vec(), 415, "unsupported Content-Type text/plain"),
        ("", b"7".to_vec(), 415, "a Content-Type is needed"),
    ] {
        let (got, text) = post(&base, content_type, &body);
        assert_eq!(got, status, "{content_type} {needle}: {text}");
        let error: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not a JSON error: {text}"));
        assert!(error.error.contains(needle), "{needle}: {}", error.error);
    }
    let blank = {
        let mut bytes = Vec::new();
        image::GrayImage::from_pixel(30, 30, image::Luma([255]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    };
    assert_eq!(post(&base, "image/png", &blank).0, 400);
    assert_eq!(get(&base, "/nope").0, 404);
    let response = agent().delete(format!("{base}/api/predict")).call().unwrap();
    assert_eq!(response.status().as_u16(), 405);
    // Still healthy after all that.
    assert_eq!(get(&base, "/healthz").0, 200);
}

#[test]
fn concurrent_clients_are_all_answered() {
    let base = start(Limits::default());
    let body = serde_json::json!({ "pixels": vec![0.25; 784] }).to_string();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (base, body) = (base.clone(), body.clone());
            std::thread::spawn(move || {
                (0..25).filter(|_| post(&base, "application/json", body.as_bytes()).0 == 200).count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 16 * 25);
}

#[test]
fn a_stalled_client_times_out_without_holding_up_the_others() {
    let base = start(Limits { timeout: Duration::from_millis(500), ..Limits::default() });
    let addr = base.trim_start_matches("http://").to_owned();
    // Headers and half a body, then nothing.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"pix"
    )
    .unwrap();
    let started = Instant::now();
    assert_eq!(get(&base, "/healthz").0, 200, "others are served meanwhile");
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
}

#[test]
fn a_client_slow_to_send_its_headers_is_disconnected() {
    let base = start(Limits { header_timeout: Duration::from_millis(300), ..Limits::default() });
    let addr = base.trim_start_matches("http://").to_owned();
    // Half a request line, then nothing; and a connection that sends nothing at all. The clock
    // starts before either connects, so that the server's deadline cannot start earlier.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&addr).unwrap();
    write!(slow, "GET /healthz HT").unwrap();
    let mut silent = TcpStream::connect(&addr).unwrap();
    assert_eq!(get(&base, "/healthz").0, 200, "others are served meanwhile");
    for stream in [&mut slow, &mut silent] {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        // Closed by the server: the read ends (with the bytes of any error response).
        let _ = stream.read_to_end(&mut answer);
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(5), "closed after {waited:?}");
}

#[test]
fn the_http_layers_own_errors_are_the_two_the_readme_names() {
    // A request hyper cannot parse, and headers beyond its buffer: answered before any route,
    // without a body (the README says so). Everything a route answers is JSON.
    let base = start(Limits::default());
    let answer = raw(&base, b"GET / HTTP/1.1\r\nNot a header\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 ") && answer.contains("content-length: 0"), "{answer}");
    let big = [b"GET / HTTP/1.1\r\nX-Big: ".as_slice(), &vec![b'a'; 1 << 20], b"\r\n\r\n"].concat();
    let answer = raw(&base, &big);
    assert!(answer.starts_with("HTTP/1.1 431 ") && answer.contains("content-length: 0"), "{answer}");
    let answer = raw(&base, b"PATCH / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 405 ") && answer.ends_with("{\"error\":\"method not allowed on this path\"}"),
        "{answer}"
    );
}

#[test]
fn beyond_the_connection_limit_the_idlest_connection_makes_way() {
    let base = start(Limits { connections: 2, ..Limits::default() });
    let addr = base.trim_start_matches("http://").to_owned();
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Two connections that send nothing take both slots; the first is the idlest.
    let mut first = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let _second = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&addr).unwrap();
    write!(third, "{request}").unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The first was closed to make way.
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(first.read(&mut [0; 1]).unwrap(), 0, "the idlest connection is closed");
}

#[test]
fn beyond_the_connection_limit_busy_connections_are_waited_for() {
    let base = start(Limits { connections: 2, body_timeout: Duration::from_secs(1), ..Limits::default() });
    let addr = base.trim_start_matches("http://").to_owned();
    // Two requests under way (their bodies not yet sent) take both slots.
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&addr).unwrap();
    write!(third, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(third.read(&mut [0u8; 1]).is_err(), "answered while both requests were under way");
    // Their bodies' deadline ends them (408): the waiting connection is then served.
    third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(busy);
}

/// A model of a type of its own, outside `nn`: a linear map of the pixels `y`, then `y + relu(y)`.
#[derive(Debug, Clone)]
struct Skip {
    params: nn::Params,
    fc: nn::Linear,
}

impl nn::Model for Skip {
    fn params(&self) -> &nn::Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut nn::Params {
        &mut self.params
    }
    fn input_width(&self) -> usize {
        self.fc.in_features
    }
    fn classes(&self) -> usize {
        self.fc.out_features
    }
    fn describe(&self) -> String {
        "skip linear".into()
    }
    fn forward(&self, tape: &mut nn::Tape, x: nn::Var) -> nn::Var {
        let y = self.fc.forward(tape, &self.params, x);
        let r = tape.relu(y);
        tape.add(y, r)
    }
    fn state_dict(&self) -> nn::StateDict {
        self.params.state_dict()
    }
    fn from_state_dict(state: &nn::StateDict) -> Result<Self, nn::NnError> {
        let missing = || nn::NnError::MissingParam { name: "fc.weight".into() };
        let &[classes, inputs] = state.get("fc.weight").ok_or_else(missing)?.shape() else { return Err(missing()) };
        let mut model = Skip::new(inputs, classes, 0);
        model.params.load_state_dict(state)?;
        Ok(model)
    }
}

impl Skip {
    fn new(inputs: usize, classes: usize, seed: u64) -> Self {
        let mut params = nn::Params::new();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        let fc = nn::Linear::new(&mut params, "fc", inputs, classes, &mut rng);
        Self { params, fc }
    }
}

#[test]
fn a_model_of_ones_own_is_served() {
    // Served as loaded from its file, as `mnist serve --model` would.
    let saved = nn::Model::state_dict(&Skip::new(784, 10, 3)).to_safetensors();
    let model: Skip = nn::Model::from_state_dict(&nn::StateDict::from_safetensors(&saved).unwrap()).unwrap();
    let pixels: Vec<f32> = (0..784).map(|i| (i % 29) as f32 / 28.0).collect();
    let x = ndarray::Array2::from_shape_vec((1, 784), pixels.clone()).unwrap();
    let (classes, probabilities) = nn::Model::classify(&model, x.view());
    let names: Vec<String> = "ABCDEFGHIJ".chars().map(String::from).collect();
    let app = serve::App::new(model, None, Limits::default()).unwrap().with_class_names(names.clone()).unwrap();
    let (base, _running) = support::start_app(app, Limits::default());

    let facts: ModelFacts = serde_json::from_str(&get(&base, "/api/model").2).unwrap();
    assert_eq!((facts.architecture.as_str(), facts.parameters), ("skip linear", 7850));
    assert_eq!(facts.class_names, names);
    let (status, body) =
        post(&base, "application/json", serde_json::json!({ "pixels": pixels }).to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let p: Prediction = serde_json::from_str(&body).unwrap();
    assert_eq!((p.class, p.probabilities), (classes[0], probabilities.row(0).to_vec()));
}

#[test]
fn a_model_that_does_not_take_28x28_images_is_refused() {
    let config = nn::SequentialConfig::parse("flatten,linear(10)", [1, 1, 100]).unwrap();
    let model = nn::Sequential::new(&config, &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0));
    let err = serve::App::new(model, None, Limits::default()).unwrap_err();
    assert_eq!(err.to_string(), "the model takes 100 values per image, but the page and the API send 28x28 = 784");
}

#[test]
fn classes_are_numbered_unless_named_once_each() {
    let app = serve::App::new(Skip::new(784, 10, 3), None, Limits::default()).unwrap();
    let err = app.with_class_names(vec!["a".into(); 9]).unwrap_err();
    assert_eq!(err.to_string(), "9 class names for a model of 10 classes");
    let facts: ModelFacts = serde_json::from_str(&get(&start(Limits::default()), "/api/model").2).unwrap();
    assert_eq!(facts.class_names, (0..10).map(|c| c.to_string()).collect::<Vec<_>>());
}

#[test]
fn a_client_waiting_for_busy_connections_gets_one_as_soon_as_they_are_idle() {
    let base = start(Limits { connections: 2, header_timeout: Duration::from_secs(4), ..Limits::default() });
    let addr = base.trim_start_matches("http://").to_owned();
    // Two keep-alive connections, busy for a while (32 MiB of pixels each), then idle.
    let costly = testkit::hostile::png_large(2048, 1 << 20);
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            let head = format!(
                "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                costly.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&costly).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    let started = Instant::now();
    let mut third = TcpStream::connect(&addr).unwrap();
    write!(third, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "answered after {took:?}, not when a connection went idle");
    drop(busy);
}
